//! The MIME primitives one by one: header fields, Content-Type parameters,
//! multipart splitting with the declared boundary, transfer decoding.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smime_milter::mime::{self, ContentType};
use smime_milter::verify;

fuzz_target!(|data: &[u8]| {
    let (block, body) = mime::split_entity(data);
    let fields = mime::parse_fields(block);
    for f in &fields {
        let _ = f.unfolded();
    }
    let cte = mime::field_value(&fields, "Content-Transfer-Encoding");
    let _ = verify::decode_body(cte.as_deref(), body);
    if let Some(ct) =
        mime::field_value(&fields, "Content-Type").and_then(|v| ContentType::parse(&v))
    {
        let _ = verify::signed_form(&ct);
        let _ = verify::signed_content(&ct, cte.as_deref(), body);
        if let Some(b) = ct.param("boundary") {
            if let Ok(m) = mime::split_multipart(body, b) {
                for p in m.parts {
                    let (pb, _) = mime::split_entity(p);
                    let _ = mime::parse_fields(pb);
                }
            }
        }
    }
});
