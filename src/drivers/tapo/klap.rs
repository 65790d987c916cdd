//! KLAP v2, the binary transport of current Tapo plug firmware
//! (`/work/shared/specs/tapo-klap.md` §1): credential hashing, the two
//! handshake hashes, session key derivation and the per-request
//! AES-128-CBC + SHA-256 framing. Pure byte code shared by our client and our
//! plug simulator, so every operation exists in both directions.

use aes::Aes128;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// A request or response body starts with a SHA-256 signature.
pub const SIGNATURE_LEN: usize = 32;
/// remote_seed(16) ‖ server_hash(32).
pub const HANDSHAKE1_REPLY_LEN: usize = 48;
const BLOCK: usize = 16;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KlapError {
    #[error(
        "KLAP body is {got} bytes, shorter than the 32-byte signature; not a KLAP reply (or the plug answered with an error page)"
    )]
    ShortBody { got: usize },
    #[error(
        "KLAP ciphertext is {got} bytes, not a non-zero multiple of 16; the body was truncated or is not AES-CBC"
    )]
    BadLength { got: usize },
    #[error(
        "KLAP ciphertext does not decrypt to valid PKCS#7 padding; the session keys or the seq do not match the plug's"
    )]
    BadPadding,
    #[error(
        "KLAP handshake1 reply is {got} bytes instead of 48 (remote seed 16 + server hash 32); the device does not speak KLAP v2"
    )]
    BadHandshake { got: usize },
}

/// v2 credential hash (all Tapo "SMART.*" devices). The e-mail is used
/// byte-for-byte: the device compares case-sensitively.
pub fn auth_hash(username: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(Sha1::digest(username.as_bytes()));
    h.update(Sha1::digest(password.as_bytes()));
    h.finalize().into()
}

fn sha256_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The `server_hash` a plug returns from handshake1; a client that computes a
/// different value holds the wrong credentials.
pub fn handshake1_hash(local_seed: &[u8; 16], remote_seed: &[u8; 16], auth: &[u8; 32]) -> [u8; 32] {
    sha256_parts(&[local_seed, remote_seed, auth])
}

/// The body of handshake2, proving to the plug that the client knows `auth`.
pub fn handshake2_hash(local_seed: &[u8; 16], remote_seed: &[u8; 16], auth: &[u8; 32]) -> [u8; 32] {
    sha256_parts(&[remote_seed, local_seed, auth])
}

/// Splits a handshake1 reply body: remote_seed(16) ‖ server_hash(32).
///
/// Anything but exactly 48 bytes is refused: a longer body could only ever
/// fail the hash comparison later, with a less helpful message.
pub fn parse_handshake1(body: &[u8]) -> Result<([u8; 16], [u8; 32]), KlapError> {
    let bad = || KlapError::BadHandshake { got: body.len() };
    if body.len() != HANDSHAKE1_REPLY_LEN {
        return Err(bad());
    }
    let (seed, hash) = body.split_at(16);
    let seed: [u8; 16] = seed.try_into().map_err(|_| bad())?;
    let hash: [u8; 32] = hash.try_into().map_err(|_| bad())?;
    Ok((seed, hash))
}

/// The value of TP_SESSIONID (and the TIMEOUT seconds if present) from a
/// Set-Cookie header value like "TP_SESSIONID=ABC;TIMEOUT=86400".
///
/// Parsed by hand because the plug puts TIMEOUT where cookie parsers expect
/// attributes. The id is echoed back in a Cookie header, so only RFC 6265
/// cookie-octets are accepted: a hostile device cannot smuggle header syntax.
pub fn parse_session_cookie(set_cookie: &str) -> Option<(String, Option<u64>)> {
    let mut id = None;
    let mut timeout = None;
    for pair in set_cookie.split(';') {
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        let name = name.trim();
        let value = value.trim();
        if name.eq_ignore_ascii_case("TP_SESSIONID") {
            if id.is_none() && !value.is_empty() && value.bytes().all(is_cookie_octet) {
                id = Some(value.to_owned());
            }
        } else if name.eq_ignore_ascii_case("TIMEOUT") {
            timeout = value.parse::<u64>().ok();
        }
    }
    id.map(|id| (id, timeout))
}

fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

/// Keys of one KLAP session plus the request counter.
#[derive(Clone)]
pub struct Session {
    key: [u8; 16],
    iv_prefix: [u8; 12],
    sig_key: [u8; 28],
    seq: i32,
}

impl std::fmt::Debug for Session {
    // Key material stays out of logs; the seq is what helps debugging.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Derives the session from the seeds and the auth hash that matched
    /// the plug's server_hash (§1.4).
    pub fn new(local_seed: &[u8; 16], remote_seed: &[u8; 16], auth: &[u8; 32]) -> Self {
        let derive =
            |label: &[u8]| -> [u8; 32] { sha256_parts(&[label, local_seed, remote_seed, auth]) };
        let lsk = derive(b"lsk");
        let iv = derive(b"iv");
        let ldk = derive(b"ldk");

        let mut key = [0u8; 16];
        key.copy_from_slice(&lsk[..16]);
        let mut iv_prefix = [0u8; 12];
        iv_prefix.copy_from_slice(&iv[..12]);
        let mut seq_bytes = [0u8; 4];
        seq_bytes.copy_from_slice(&iv[28..]);
        let mut sig_key = [0u8; 28];
        sig_key.copy_from_slice(&ldk[..28]);

        Self {
            key,
            iv_prefix,
            sig_key,
            seq: i32::from_be_bytes(seq_bytes),
        }
    }

    /// The last seq handed out (initially the derived initial seq).
    pub fn seq(&self) -> i32 {
        self.seq
    }

    /// Pre-increments and returns the seq for the next request; None when it
    /// would overflow i32. The plug's behaviour on wrap-around is unknown,
    /// so the caller re-handshakes instead; the state is left unchanged.
    pub fn next_seq(&mut self) -> Option<i32> {
        let next = self.seq.checked_add(1)?;
        self.seq = next;
        Some(next)
    }

    fn iv(&self, seq: i32) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[..12].copy_from_slice(&self.iv_prefix);
        iv[12..].copy_from_slice(&seq.to_be_bytes());
        iv
    }

    fn signature(&self, seq: i32, ciphertext: &[u8]) -> [u8; 32] {
        sha256_parts(&[&self.sig_key, &seq.to_be_bytes(), ciphertext])
    }

    /// signature(32) ‖ AES-128-CBC(PKCS#7) ciphertext, with IV = iv_prefix ‖
    /// seq BE; signature = SHA256(sig_key ‖ seq BE ‖ ciphertext).
    pub fn encrypt(&self, seq: i32, plaintext: &[u8]) -> Vec<u8> {
        // PKCS#7 always adds 1..=16 bytes.
        let ct_len = (plaintext.len() / BLOCK + 1) * BLOCK;
        let mut out = vec![0u8; SIGNATURE_LEN + ct_len];
        let (sig, ct) = out.split_at_mut(SIGNATURE_LEN);
        ct[..plaintext.len()].copy_from_slice(plaintext);
        let enc = cbc::Encryptor::<Aes128>::new(&self.key.into(), &self.iv(seq).into());
        // The buffer is sized for the padding, so this cannot fail; should it
        // ever, an all-zero ciphertext is rejected by the peer instead of
        // crashing the poller.
        if enc
            .encrypt_padded_mut::<Pkcs7>(ct, plaintext.len())
            .is_err()
        {
            ct.fill(0);
        }
        sig.copy_from_slice(&self.signature(seq, ct));
        out
    }

    /// Inverse of [`Session::encrypt`]. Does not check the signature (real
    /// plugs' clients don't; see [`Session::verify`]).
    pub fn decrypt(&self, seq: i32, body: &[u8]) -> Result<Vec<u8>, KlapError> {
        let Some(ct) = body.get(SIGNATURE_LEN..) else {
            return Err(KlapError::ShortBody { got: body.len() });
        };
        if ct.is_empty() || ct.len() % BLOCK != 0 {
            return Err(KlapError::BadLength { got: ct.len() });
        }
        let mut buf = ct.to_vec();
        let dec = cbc::Decryptor::<Aes128>::new(&self.key.into(), &self.iv(seq).into());
        let len = dec
            .decrypt_padded_mut::<Pkcs7>(&mut buf)
            .map_err(|_| KlapError::BadPadding)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Checks the signature (the simulator uses it on requests). Compared in
    /// constant time so a network peer cannot probe it byte by byte.
    pub fn verify(&self, seq: i32, body: &[u8]) -> bool {
        let Some((sig, ct)) = body.split_at_checked(SIGNATURE_LEN) else {
            return false;
        };
        let expected = self.signature(seq, ct);
        sig.iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::hex;

    fn seeds() -> ([u8; 16], [u8; 16]) {
        let mut local = [0u8; 16];
        let mut remote = [0u8; 16];
        for i in 0..16u8 {
            local[usize::from(i)] = i;
            remote[usize::from(i)] = 0x10 + i;
        }
        (local, remote)
    }

    // The test vector of spec §1.9 (checked there against python-kasa).
    #[test]
    fn spec_vector() {
        let (local, remote) = seeds();
        let auth = auth_hash("user@example.com", "secret");
        assert_eq!(
            auth.to_vec(),
            hex("b039216532fc844e9ae0cc8fe3ea911c9ba09c641bb96a3e1f776d93f7b5ae9b")
        );
        assert_eq!(
            handshake1_hash(&local, &remote, &auth).to_vec(),
            hex("8ed3b905e654fbee23900d0244156a33029c025b71b03bfcc601eff33aaebb70")
        );
        assert_eq!(
            handshake2_hash(&local, &remote, &auth).to_vec(),
            hex("1e590e7a4dc128da48ed17e06fe23ddb6ec646bb6da2eb00708d590f194201d7")
        );
        let mut s = Session::new(&local, &remote, &auth);
        assert_eq!(s.key.to_vec(), hex("35dcf29cd535ce140a239c67f641d395"));
        assert_eq!(s.iv_prefix.to_vec(), hex("863e09a70667472d3fa152a4"));
        assert_eq!(
            s.sig_key.to_vec(),
            hex("777443e2fdd5cb21052633a60e830f44c8654b3a701f449231ed11fa")
        );
        assert_eq!(s.seq(), -903_964_344);
        let seq = s.next_seq().unwrap();
        assert_eq!(seq, -903_964_343);
        assert_eq!(s.seq(), seq);

        let req = br#"{"method":"get_device_info"}"#;
        let body = s.encrypt(seq, req);
        assert_eq!(
            body,
            hex(
                "81da24b0a1db4c9ec2fd895b347d416921d7f7a822457b501a52072e5f9acebf
                 1119b459358000bec16c976ef226a249c491bf18064c9319a51d85792116a683"
            )
        );
        assert!(s.verify(seq, &body));
        assert_eq!(s.decrypt(seq, &body).unwrap(), req.to_vec());
    }

    #[test]
    fn handshake1_reply_split_and_check() {
        let (local, remote) = seeds();
        let auth = auth_hash("user@example.com", "secret");
        let server = handshake1_hash(&local, &remote, &auth);
        let mut body = remote.to_vec();
        body.extend_from_slice(&server);
        assert_eq!(parse_handshake1(&body), Ok((remote, server)));
        assert_eq!(
            parse_handshake1(&body[..47]),
            Err(KlapError::BadHandshake { got: 47 })
        );
        body.push(0);
        assert_eq!(
            parse_handshake1(&body),
            Err(KlapError::BadHandshake { got: 49 })
        );
        assert_eq!(
            parse_handshake1(&[]),
            Err(KlapError::BadHandshake { got: 0 })
        );
        // A different password gives a different server hash: that is how a
        // client detects wrong credentials.
        let wrong = auth_hash("user@example.com", "Secret");
        assert_ne!(handshake1_hash(&local, &remote, &wrong), server);
        assert_ne!(
            auth_hash("User@example.com", "secret"),
            auth,
            "e-mail is case-sensitive"
        );
    }

    #[test]
    fn round_trip_and_errors() {
        let (local, remote) = seeds();
        let s = Session::new(&local, &remote, &auth_hash("a", "b"));
        for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 1000] {
            let pt: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            for seq in [i32::MIN, -1, 0, 1, i32::MAX] {
                let body = s.encrypt(seq, &pt);
                assert_eq!(body.len(), 32 + (len / 16 + 1) * 16);
                assert!(s.verify(seq, &body));
                assert_eq!(s.decrypt(seq, &body).unwrap(), pt);
                if seq != 0 {
                    assert!(!s.verify(0, &body), "seq is part of the signature");
                }
            }
        }
        let body = s.encrypt(5, b"hello");
        let mut tampered = body.clone();
        tampered[40] ^= 1;
        assert!(!s.verify(5, &tampered));
        let mut bad_sig = body.clone();
        bad_sig[0] ^= 1;
        assert!(!s.verify(5, &bad_sig));
        // decrypt ignores the signature on purpose.
        assert_eq!(s.decrypt(5, &bad_sig).unwrap(), b"hello");

        assert_eq!(
            s.decrypt(5, &body[..31]),
            Err(KlapError::ShortBody { got: 31 })
        );
        assert_eq!(
            s.decrypt(5, &body[..32]),
            Err(KlapError::BadLength { got: 0 })
        );
        assert_eq!(
            s.decrypt(5, &body[..40]),
            Err(KlapError::BadLength { got: 8 })
        );
        assert!(!s.verify(5, &body[..31]));
        // Other keys garble the block; a one-block message then almost
        // always fails the padding check, and never yields the plaintext.
        let other = Session::new(&remote, &local, &auth_hash("a", "b"));
        assert_ne!(other.decrypt(5, &body).ok(), Some(b"hello".to_vec()));
    }

    #[test]
    fn bad_padding_detected() {
        let (local, remote) = seeds();
        let s = Session::new(&local, &remote, &auth_hash("a", "b"));
        // Encrypting 16 bytes whose last byte is 0 without padding gives a
        // block that decrypts to an invalid pad byte.
        let mut ct = [0u8; 16];
        cbc::Encryptor::<Aes128>::new(&s.key.into(), &s.iv(9).into())
            .encrypt_padded_mut::<cbc::cipher::block_padding::NoPadding>(&mut ct, 16)
            .unwrap();
        let mut body = vec![0u8; 32];
        body.extend_from_slice(&ct);
        assert_eq!(s.decrypt(9, &body), Err(KlapError::BadPadding));
    }

    #[test]
    fn seq_overflow_is_refused() {
        let (local, remote) = seeds();
        let mut s = Session::new(&local, &remote, &auth_hash("a", "b"));
        s.seq = i32::MAX - 1;
        assert_eq!(s.next_seq(), Some(i32::MAX));
        assert_eq!(s.next_seq(), None);
        assert_eq!(s.seq(), i32::MAX, "state unchanged after refusal");
        s.seq = -1;
        assert_eq!(s.next_seq(), Some(0));
    }

    #[test]
    fn debug_hides_keys() {
        let (local, remote) = seeds();
        let s = Session::new(&local, &remote, &auth_hash("user@example.com", "secret"));
        let dbg = format!("{s:?}");
        assert_eq!(dbg, "Session { seq: -903964344, .. }");
        let key_hex: String = s.key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!dbg.contains(&key_hex));
    }

    #[test]
    fn session_cookie() {
        let p = parse_session_cookie;
        assert_eq!(
            p("TP_SESSIONID=ABC;TIMEOUT=86400"),
            Some(("ABC".into(), Some(86400)))
        );
        assert_eq!(
            p(" TP_SESSIONID = 0123ABCDEF ; TIMEOUT = 1440 ; Path=/"),
            Some(("0123ABCDEF".into(), Some(1440)))
        );
        assert_eq!(
            p("tp_sessionid=abc;timeout=60"),
            Some(("abc".into(), Some(60)))
        );
        assert_eq!(p("TP_SESSIONID=ABC"), Some(("ABC".into(), None)));
        assert_eq!(
            p("TIMEOUT=86400;TP_SESSIONID=X"),
            Some(("X".into(), Some(86400)))
        );
        assert_eq!(
            p("TP_SESSIONID=ABC;TIMEOUT=soon"),
            Some(("ABC".into(), None))
        );
        assert_eq!(p("TP_SESSIONID=ABC;TIMEOUT=-5"), Some(("ABC".into(), None)));
        assert_eq!(p(""), None);
        assert_eq!(p("garbage"), None);
        assert_eq!(p(";;;==;"), None);
        assert_eq!(p("TIMEOUT=86400"), None);
        assert_eq!(p("TP_SESSIONID=;TIMEOUT=86400"), None);
        assert_eq!(p("OTHER=1; TP_SESSIONIDX=2"), None);
        // Values that would corrupt the Cookie header we send back.
        assert_eq!(p("TP_SESSIONID=A B"), None);
        assert_eq!(p("TP_SESSIONID=A\r\nX-Evil: 1"), None);
        assert_eq!(p("TP_SESSIONID=\"AB\""), None);
        assert_eq!(p("TP_SESSIONID=ÄB"), None);
    }
}

/// Case counts feed the total in `api.rs`'s `fuzz` module (1,500 each;
/// failure_persistence off so a failure writes nothing into the source tree).
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1_500, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn encrypt_decrypt_round_trip(
            seeds in any::<([u8; 16], [u8; 16])>(),
            plain in proptest::collection::vec(any::<u8>(), 0..300),
            seq in any::<i32>(),
        ) {
            let s = Session::new(&seeds.0, &seeds.1, &auth_hash("u", "p"));
            let body = s.encrypt(seq, &plain);
            prop_assert_eq!(body.len(), SIGNATURE_LEN + (plain.len() / 16 + 1) * 16);
            prop_assert!(s.verify(seq, &body));
            prop_assert_eq!(s.decrypt(seq, &body).unwrap(), plain);
            prop_assert!(!s.verify(seq.wrapping_add(1), &body));
        }

        #[test]
        fn decrypt_and_verify_arbitrary_bodies(
            body in proptest::collection::vec(any::<u8>(), 0..200),
            seq in any::<i32>(),
        ) {
            let s = Session::new(&[0; 16], &[0; 16], &[0; 32]);
            match s.decrypt(seq, &body) {
                Ok(plain) => prop_assert!(plain.len() < body.len() - SIGNATURE_LEN),
                Err(KlapError::ShortBody { got }) => prop_assert!(got < SIGNATURE_LEN),
                Err(KlapError::BadLength { got }) => prop_assert!(got == 0 || got % 16 != 0),
                Err(e) => prop_assert_eq!(e, KlapError::BadPadding),
            }
            let _ = s.verify(seq, &body);
            let _ = parse_handshake1(&body);
            let _ = parse_session_cookie(&String::from_utf8_lossy(&body));
        }
    }
}
