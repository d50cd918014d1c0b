//! Keys in a PKCS#11 token (HSM), through OpenSSL's engine API and libp11's
//! `pkcs11` engine (Debian: libengine-pkcs11-openssl). The private key never
//! leaves the token: OpenSSL's CMS code calls the engine, which asks the
//! token to sign or to decrypt the content-encryption key, so the CMS
//! structures are exactly those of file keys. libp11 keeps a pool of PKCS#11
//! sessions, so messages are signed concurrently.

use crate::ffi::{
    BindFn, DynamicFns, ENGINE_ctrl_cmd, ENGINE_ctrl_cmd_string, ENGINE_finish, ENGINE_free,
    ENGINE_get_static_state, ENGINE_init, ENGINE_load_private_key, ENGINE_new,
};
use foreign_types::ForeignType;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

/// Whether a configured key or certificate names a token object.
pub fn is_uri(s: &str) -> bool {
    s.starts_with("pkcs11:")
}

/// The PIN, kept out of logs, `ps` and Debug output.
#[derive(Clone)]
pub struct Pin(String);

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin(<hidden>)")
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        // Best effort: overwrite the bytes before the memory is freed.
        // SAFETY: only zero bytes are written, which keeps the String valid UTF-8.
        let bytes = unsafe { self.0.as_bytes_mut() };
        bytes.iter_mut().for_each(|b| *b = 0);
    }
}

impl Pin {
    pub fn new(s: String) -> Pin {
        Pin(s)
    }
}

struct Engine(*mut c_void);
// SAFETY: the engine handle is only used under the Token's lock.
unsafe impl Send for Engine {}
unsafe impl Sync for Engine {}

/// The engine and the keys loaded through it. Keys hold references on the
/// engine: to restart the module, every key is dropped first.
struct State {
    engine: Option<Engine>,
    /// Every key URI loaded at start: what a restart loads again.
    wanted: Vec<String>,
    keys: HashMap<String, PKey<Private>>,
}

/// The engine bound to one PKCS#11 module, logged in with the PIN.
pub struct Token {
    module: PathBuf,
    pin: Pin,
    /// Operations share it (read); a restart of the module takes it alone.
    state: RwLock<State>,
    /// When the module was last restarted: at most once per interval, so a
    /// flood of bad messages cannot keep the token busy restarting.
    last_reopen: Mutex<Option<std::time::Instant>>,
}

const REOPEN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({})", self.module.display())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    #[error("the OpenSSL pkcs11 engine is not available (install libengine-pkcs11-openssl)")]
    NoEngine,
    #[error("cannot load PKCS#11 module {0}")]
    Module(String),
    #[error("PKCS#11 module {0} was restarted less than 2 s ago; not again yet")]
    Busy(String),
    #[error("cannot use {uri}: {why}")]
    Object { uri: String, why: String },
}

/// OpenSSL's error queue as text, the PIN scrubbed if it ever appears.
fn errors(pin: &Pin) -> String {
    let e = openssl::error::ErrorStack::get();
    let mut text: Vec<String> = e
        .errors()
        .iter()
        .filter_map(|x| x.reason().map(str::to_string))
        .collect();
    text.dedup();
    let s = if text.is_empty() {
        "token refused the operation (wrong PIN, missing token or object)".to_string()
    } else {
        text.join(", ")
    };
    if pin.0.is_empty() {
        s
    } else {
        s.replace(&pin.0, "<PIN>")
    }
}

/// Where OpenSSL looks for engines: $OPENSSL_ENGINES, else its build-time
/// ENGINESDIR.
fn engines_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("OPENSSL_ENGINES") {
        return d.into();
    }
    // SAFETY: OpenSSL_version returns a static NUL-terminated string.
    let v = unsafe { std::ffi::CStr::from_ptr(openssl_sys::OpenSSL_version(5)) };
    let v = v.to_string_lossy();
    v.split('"')
        .nth(1)
        .unwrap_or("/usr/lib/x86_64-linux-gnu/engines-3")
        .into()
}

/// libp11's engine entry point, `bind_engine` in its engine object, found
/// once. OpenSSL's own dynamic loader allows one live instance per shared
/// object, but a restarted module needs a fresh libp11 context (slots,
/// sessions, cached objects), so each instance is bound here on a new
/// ENGINE.
fn bind_fn() -> Option<BindFn> {
    static BIND: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let f = BIND.get_or_init(|| {
        let so = engines_dir().join("pkcs11.so");
        let so = CString::new(so.as_os_str().as_encoded_bytes()).ok()?;
        // Never closed: the engine's code stays in use.
        // SAFETY: `so` is a NUL-terminated path; the handle is checked for null.
        let h = unsafe { libc::dlopen(so.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if h.is_null() {
            return None;
        }
        // SAFETY: `h` is a live handle (never closed), the name a C string.
        let sym = unsafe { libc::dlsym(h, c"bind_engine".as_ptr()) };
        (!sym.is_null()).then_some(sym as usize)
    });
    // SAFETY: the symbol is OpenSSL's dynamic-engine bind function.
    f.map(|p| unsafe { std::mem::transmute::<usize, BindFn>(p) })
}

/// A new instance of libp11's engine with its own context, logged in.
fn open_engine(module: &Path, pin: &Pin) -> Result<Engine, Pkcs11Error> {
    let bind = bind_fn().ok_or(Pkcs11Error::NoEngine)?;
    // SAFETY: ENGINE_new takes nothing; the result is checked for null and
    // freed on every error path below.
    let e = unsafe { ENGINE_new() };
    if e.is_null() {
        return Err(Pkcs11Error::NoEngine);
    }
    let fns = DynamicFns {
        // SAFETY: returns a pointer to libcrypto's static state; no arguments.
        static_state: unsafe { ENGINE_get_static_state() },
        mem_fns: [std::ptr::null_mut(); 3],
    };
    // SAFETY: `bind` is libp11's bind_engine (OpenSSL's dynamic-engine ABI):
    // a live ENGINE, a C string id and a dynamic_fns that outlives the call.
    if unsafe { bind(e, c"pkcs11".as_ptr(), &fns) } != 1 {
        let _ = openssl::error::ErrorStack::get();
        // SAFETY: `e` is our structural reference, not used after this.
        unsafe { ENGINE_free(e) };
        return Err(Pkcs11Error::NoEngine);
    }
    let set = |cmd: &str, arg: &str| -> bool {
        let (c, a) = (
            CString::new(cmd).expect("no NUL"),
            CString::new(arg).unwrap_or_default(),
        );
        // SAFETY: `e` is live; `c` and `a` are C strings that outlive the call.
        let ok = unsafe { ENGINE_ctrl_cmd_string(e, c.as_ptr(), a.as_ptr(), 0) == 1 };
        // The copy made for C (here, the PIN) is overwritten before it is freed.
        a.into_bytes().fill(0);
        ok
    };
    let module_s = module.display().to_string();
    if !module.exists()
        || !set("MODULE_PATH", &module_s)
        || !set("PIN", &pin.0)
        // SAFETY: `e` is a live, bound ENGINE.
        || unsafe { ENGINE_init(e) } != 1
    {
        let _ = openssl::error::ErrorStack::get();
        // SAFETY: `e` is our structural reference, not used after this.
        unsafe { ENGINE_free(e) };
        return Err(Pkcs11Error::Module(module_s));
    }
    // ENGINE_init took a functional reference; drop the structural one.
    // SAFETY: the functional reference ENGINE_init took keeps `e` alive.
    unsafe { ENGINE_free(e) };
    // Binding and initialising may leave probe errors queued: not ours.
    let _ = openssl::error::ErrorStack::get();
    Ok(Engine(e))
}

#[repr(C)]
struct LoadCert {
    id: *const c_char,
    cert: *mut openssl_sys::X509,
}

fn load_key_with(engine: &Engine, pin: &Pin, uri: &str) -> Result<PKey<Private>, Pkcs11Error> {
    let c = CString::new(uri).map_err(|_| Pkcs11Error::Object {
        uri: uri.into(),
        why: "NUL in URI".into(),
    })?;
    // SAFETY: the engine is initialised (a functional reference) and `c` is a
    // C string that outlives the call; null callbacks are allowed.
    let p = unsafe {
        ENGINE_load_private_key(
            engine.0,
            c.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if p.is_null() {
        return Err(Pkcs11Error::Object {
            uri: uri.into(),
            why: errors(pin),
        });
    }
    // SAFETY: `p` is a non-null EVP_PKEY whose reference we now own.
    Ok(unsafe { PKey::from_ptr(p) })
}

/// The tokens open in this process, by module: a reload that names the
/// same module and PIN keeps using the open one (its sessions and login),
/// and two engines never share one module.
fn registry() -> &'static Mutex<HashMap<PathBuf, std::sync::Weak<Token>>> {
    static REG: std::sync::OnceLock<Mutex<HashMap<PathBuf, std::sync::Weak<Token>>>> =
        std::sync::OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
}

impl Token {
    /// The token for `module`: the one already open when its PIN is the
    /// same, else a new one.
    pub fn open_shared(module: &Path, pin: Pin) -> Result<std::sync::Arc<Token>, Pkcs11Error> {
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = reg.get(module).and_then(std::sync::Weak::upgrade) {
            if t.pin.0 == pin.0 {
                return Ok(t);
            }
        }
        let t = std::sync::Arc::new(Token::open(module, pin)?);
        reg.insert(module.to_path_buf(), std::sync::Arc::downgrade(&t));
        Ok(t)
    }

    pub fn open(module: &Path, pin: Pin) -> Result<Token, Pkcs11Error> {
        let engine = open_engine(module, &pin)?;
        Ok(Token {
            module: module.to_path_buf(),
            pin,
            state: RwLock::new(State {
                engine: Some(engine),
                wanted: Vec::new(),
                keys: HashMap::new(),
            }),
            last_reopen: Mutex::new(None),
        })
    }

    /// Finds a private key in the token (it stays there) and keeps a handle
    /// on it; returns a handle for the checks done at load.
    pub fn load_key(&self, uri: &str) -> Result<PKey<Private>, Pkcs11Error> {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let engine = st
            .engine
            .as_ref()
            .ok_or_else(|| Pkcs11Error::Module(self.module.display().to_string()))?;
        let key = load_key_with(engine, &self.pin, uri)?;
        if !st.wanted.iter().any(|u| u == uri) {
            st.wanted.push(uri.to_string());
        }
        st.keys.insert(uri.to_string(), key.clone());
        Ok(key)
    }

    /// A certificate stored in the token.
    pub fn load_cert(&self, uri: &str) -> Result<X509, Pkcs11Error> {
        let st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let engine = st
            .engine
            .as_ref()
            .ok_or_else(|| Pkcs11Error::Module(self.module.display().to_string()))?;
        let c = CString::new(uri).map_err(|_| Pkcs11Error::Object {
            uri: uri.into(),
            why: "NUL in URI".into(),
        })?;
        let cmd = CString::new("LOAD_CERT_CTRL").expect("no NUL");
        let mut params = LoadCert {
            id: c.as_ptr(),
            cert: std::ptr::null_mut(),
        };
        // SAFETY: LOAD_CERT_CTRL takes a pointer to libp11's {id, cert} struct,
        // which `params` is (repr(C)), alive for the call; `c` outlives it.
        let ok = unsafe {
            ENGINE_ctrl_cmd(
                engine.0,
                cmd.as_ptr(),
                0,
                &mut params as *mut LoadCert as *mut c_void,
                std::ptr::null_mut(),
                1,
            )
        };
        if ok != 1 || params.cert.is_null() {
            return Err(Pkcs11Error::Object {
                uri: uri.into(),
                why: errors(&self.pin),
            });
        }
        // SAFETY: libp11 handed us a new reference to a non-null X509.
        Ok(unsafe { X509::from_ptr(params.cert) })
    }

    /// Runs `op` with the key for `uri`, under the shared lock (operations
    /// run concurrently; libp11 keeps a pool of sessions). `None` when the
    /// key is not available (the token is being restarted or is gone).
    pub fn with_key<T>(&self, uri: &str, op: impl FnOnce(&PKey<Private>) -> T) -> Option<T> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        st.keys.get(uri).map(op)
    }

    /// Restarts the PKCS#11 module and reloads the keys (logging in anew):
    /// after a token was removed and put back, the module's sessions and
    /// object handles are stale, and SoftHSM2 and many drivers only see the
    /// token again after C_Finalize/C_Initialize. Waits for operations in
    /// flight (write lock), so nothing uses the module while it restarts.
    /// One `Token` per module (see `open_shared`), so no other engine has
    /// the module finalized under it.
    pub fn reopen(&self) -> Result<(), Pkcs11Error> {
        {
            let mut last = self.last_reopen.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < REOPEN_INTERVAL) {
                return Err(Pkcs11Error::Busy(self.module.display().to_string()));
            }
            *last = Some(std::time::Instant::now());
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.keys.clear();
        // Our keys are gone, so this releases the engine: libp11 closes its
        // sessions, finalizes and unloads the module (C_Finalize), which is
        // what makes SoftHSM2 and many drivers see a token put back.
        if let Some(old) = st.engine.take() {
            // SAFETY: `old` held the functional reference; no key of it is left.
            unsafe { ENGINE_finish(old.0) };
            let _ = openssl::error::ErrorStack::get();
        }
        // A fresh engine instance, whose libp11 context loads and
        // initializes the module anew and lists the slots.
        let engine = open_engine(&self.module, &self.pin)?;
        for uri in st.wanted.clone() {
            match load_key_with(&engine, &self.pin, &uri) {
                Ok(k) => {
                    st.keys.insert(uri, k);
                }
                // Reported when that key is used.
                Err(e) => log::warn!("after restarting the PKCS#11 module: {e}"),
            }
        }
        st.engine = Some(engine);
        Ok(())
    }
}
