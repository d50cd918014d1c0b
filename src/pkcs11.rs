//! Keys in a PKCS#11 token (HSM), through OpenSSL's engine API and libp11's
//! `pkcs11` engine (Debian: libengine-pkcs11-openssl). The private key never
//! leaves the token: OpenSSL's CMS code calls the engine, which asks the
//! token to sign or to decrypt the content-encryption key, so the CMS
//! structures are exactly those of file keys. libp11 keeps a pool of PKCS#11
//! sessions, so messages are signed concurrently.

use foreign_types::ForeignType;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_long, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

extern "C" {
    fn ENGINE_by_id(id: *const c_char) -> *mut c_void;
    fn ENGINE_ctrl_cmd_string(
        e: *mut c_void,
        cmd: *const c_char,
        arg: *const c_char,
        optional: c_int,
    ) -> c_int;
    fn ENGINE_ctrl_cmd(
        e: *mut c_void,
        cmd: *const c_char,
        i: c_long,
        p: *mut c_void,
        f: *mut c_void,
        optional: c_int,
    ) -> c_int;
    fn ENGINE_init(e: *mut c_void) -> c_int;
    fn ENGINE_free(e: *mut c_void) -> c_int;
    fn ENGINE_load_private_key(
        e: *mut c_void,
        key_id: *const c_char,
        ui: *mut c_void,
        cb: *mut c_void,
    ) -> *mut openssl_sys::EVP_PKEY;
}

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

fn open_engine(module: &Path, pin: &Pin) -> Result<Engine, Pkcs11Error> {
    let id = CString::new("pkcs11").expect("no NUL");
    let e = unsafe { ENGINE_by_id(id.as_ptr()) };
    if e.is_null() {
        let _ = openssl::error::ErrorStack::get();
        return Err(Pkcs11Error::NoEngine);
    }
    let set = |cmd: &str, arg: &str| -> bool {
        let (c, a) = (
            CString::new(cmd).expect("no NUL"),
            CString::new(arg).unwrap_or_default(),
        );
        unsafe { ENGINE_ctrl_cmd_string(e, c.as_ptr(), a.as_ptr(), 0) == 1 }
    };
    let module_s = module.display().to_string();
    if !module.exists()
        || !set("MODULE_PATH", &module_s)
        || !set("PIN", &pin.0)
        || unsafe { ENGINE_init(e) } != 1
    {
        let _ = openssl::error::ErrorStack::get();
        unsafe { ENGINE_free(e) };
        return Err(Pkcs11Error::Module(module_s));
    }
    // ENGINE_init took a functional reference; drop the structural one.
    unsafe { ENGINE_free(e) };
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
    Ok(unsafe { PKey::from_ptr(p) })
}

impl Token {
    pub fn open(module: &Path, pin: Pin) -> Result<Token, Pkcs11Error> {
        let engine = open_engine(module, &pin)?;
        Ok(Token {
            module: module.to_path_buf(),
            pin,
            state: RwLock::new(State {
                engine: Some(engine),
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
        Ok(unsafe { X509::from_ptr(params.cert) })
    }

    /// Runs `op` with the key for `uri`, under the shared lock (operations
    /// run concurrently; libp11 keeps a pool of sessions). `None` when the
    /// key is not available (the token is being restarted or is gone).
    pub fn with_key<T>(&self, uri: &str, op: impl FnOnce(&PKey<Private>) -> T) -> Option<T> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        st.keys.get(uri).map(op)
    }

    /// Lists the slots again and reloads the keys (logging in anew): after a
    /// token was removed and put back, the old sessions are gone. Waits for
    /// operations in flight.
    pub fn reopen(&self) -> Result<(), Pkcs11Error> {
        {
            let mut last = self.last_reopen.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < REOPEN_INTERVAL) {
                return Ok(());
            }
            *last = Some(std::time::Instant::now());
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let uris: Vec<String> = st.keys.keys().cloned().collect();
        st.keys.clear();
        // libp11 lists the slots afresh (RE_ENUMERATE): a token put back is
        // found again, and loading a key logs in anew. (The engine itself
        // cannot be restarted: libp11 caches its key objects, which keep it
        // initialised for the life of the process.)
        let engine = st
            .engine
            .take()
            .ok_or_else(|| Pkcs11Error::Module(self.module.display().to_string()))?;
        let cmd = CString::new("RE_ENUMERATE").expect("no NUL");
        unsafe {
            ENGINE_ctrl_cmd(
                engine.0,
                cmd.as_ptr(),
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        let _ = openssl::error::ErrorStack::get();
        let mut result = Ok(());
        for uri in uris {
            match load_key_with(&engine, &self.pin, &uri) {
                Ok(k) => {
                    st.keys.insert(uri, k);
                }
                Err(e) => result = Err(e),
            }
        }
        st.engine = Some(engine);
        result
    }
}
