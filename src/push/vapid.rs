//! The VAPID key (RFC 8292): loading the original app's key or generating
//! one, the applicationServerKey browsers subscribe with, and the JWT that
//! identifies us to push services.
//!
//! The JWT is built here rather than by web-push-native because its `aud`
//! drops a non-default port (`http://127.0.0.1` for `http://127.0.0.1:8768`),
//! which RFC 8292 forbids and strict push services reject.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::SecretKey;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, LineEnding};
use serde::{Deserialize, Serialize};

use crate::storage::Store;

/// Push services accept tokens valid for at most 24 h (RFC 8292 §2).
pub const MAX_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Name of the generated key in `[storage] dir` (`push-vapid.json`).
pub const STORE_NAME: &str = "push-vapid";

#[derive(Debug, thiserror::Error)]
pub enum VapidError {
    #[error(
        "{path}: not a P-256 private key in PEM (expected BEGIN PRIVATE KEY or BEGIN EC PRIVATE KEY)"
    )]
    BadPem { path: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::storage::StoreError),
    #[error("cannot generate a key: {0}")]
    Random(String),
    #[error("endpoint {0} has no origin to put in the JWT audience")]
    NoOrigin(String),
}

/// The application server's key pair. `Debug` shows the public half only.
#[derive(Clone)]
pub struct VapidKey {
    secret: SecretKey,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VapidKey({})", self.application_server_key())
    }
}

/// How a generated key is kept: PKCS#8 PEM inside the JSON the store writes.
#[derive(Serialize, Deserialize)]
struct Stored {
    pkcs8_pem: String,
}

impl VapidKey {
    /// PKCS#8 (`BEGIN PRIVATE KEY`, what `vapid --gen` writes) or SEC1
    /// (`BEGIN EC PRIVATE KEY`, the original app's `VAPID_PRIVATE_KEY`).
    pub fn from_pem(pem: &str) -> Option<Self> {
        let pem = pem.trim();
        SecretKey::from_pkcs8_pem(pem)
            .ok()
            .or_else(|| SecretKey::from_sec1_pem(pem).ok())
            .map(|secret| Self { secret })
    }

    pub fn from_file(path: &Path) -> Result<Self, VapidError> {
        let text = std::fs::read_to_string(path).map_err(|source| VapidError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(&text).ok_or_else(|| VapidError::BadPem {
            path: path.display().to_string(),
        })
    }

    pub fn generate() -> Result<Self, VapidError> {
        // A random 32-byte string is a valid scalar except with probability
        // ~2^-32; try again in that case.
        for _ in 0..8 {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| VapidError::Random(e.to_string()))?;
            if let Ok(secret) = SecretKey::from_slice(&bytes) {
                return Ok(Self { secret });
            }
        }
        Err(VapidError::Random("no valid scalar drawn".into()))
    }

    /// The configured file, else the key kept in the storage dir, else a new
    /// one saved there (atomically) so that subscriptions survive restarts.
    pub fn load_or_generate(file: Option<&Path>, storage_dir: &Path) -> Result<Self, VapidError> {
        if let Some(path) = file {
            return Self::from_file(path);
        }
        let store = Store::new(storage_dir);
        if let Some(stored) = store.load::<Stored>(STORE_NAME)? {
            return Self::from_pem(&stored.pkcs8_pem).ok_or_else(|| VapidError::BadPem {
                path: stored_path(storage_dir).display().to_string(),
            });
        }
        let key = Self::generate()?;
        store.save(
            STORE_NAME,
            &Stored {
                pkcs8_pem: key.to_pkcs8_pem(),
            },
        )?;
        restrict_permissions(&stored_path(storage_dir));
        Ok(key)
    }

    pub fn to_pkcs8_pem(&self) -> String {
        self.secret
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            // Encoding a valid in-memory key cannot fail; an empty string
            // would fail to load and say so, rather than panic here.
            .unwrap_or_default()
    }

    /// The uncompressed public point (65 bytes, `0x04 ‖ x ‖ y`).
    pub fn public_bytes(&self) -> Vec<u8> {
        self.secret
            .public_key()
            .as_affine()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    }

    /// What the page passes to `pushManager.subscribe` and the `k=` of the
    /// Authorization header: base64url without padding.
    pub fn application_server_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.public_bytes())
    }

    /// A signed ES256 JWT for `endpoint`, expiring `valid` (at most 24 h)
    /// after `now_unix`.
    pub fn jwt(
        &self,
        endpoint: &url::Url,
        subject: Option<&str>,
        now_unix: u64,
        valid: Duration,
    ) -> Result<String, VapidError> {
        let aud = audience(endpoint).ok_or_else(|| VapidError::NoOrigin(endpoint.to_string()))?;
        let exp = now_unix + valid.min(MAX_VALIDITY).as_secs();
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256"});
        let mut claims = serde_json::json!({"aud": aud, "exp": exp});
        if let Some(sub) = subject {
            claims["sub"] = sub.into();
        }
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: Signature = SigningKey::from(&self.secret).sign(signing_input.as_bytes());
        // JWS ES256 is the raw r ‖ s (64 bytes), not DER.
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }

    /// `Authorization: vapid t=<jwt>, k=<applicationServerKey>` (RFC 8292 §3).
    pub fn authorization(
        &self,
        endpoint: &url::Url,
        subject: Option<&str>,
        now_unix: u64,
        valid: Duration,
    ) -> Result<String, VapidError> {
        Ok(format!(
            "vapid t={}, k={}",
            self.jwt(endpoint, subject, now_unix, valid)?,
            self.application_server_key()
        ))
    }
}

/// The origin of the push resource: scheme, host and a non-default port.
pub fn audience(endpoint: &url::Url) -> Option<String> {
    match endpoint.origin() {
        o @ url::Origin::Tuple(..) => Some(o.ascii_serialization()),
        url::Origin::Opaque(_) => None,
    }
}

/// The origin of an endpoint given as text, for logs: endpoints are
/// capability URLs, so only their origin is ever written down.
pub fn audience_of(endpoint: &str) -> String {
    url::Url::parse(endpoint)
        .ok()
        .and_then(|u| audience(&u))
        .unwrap_or_else(|| "?".into())
}

fn stored_path(dir: &Path) -> PathBuf {
    dir.join(format!("{STORE_NAME}.json"))
}

/// The key file holds a private key: owner only. Best effort (not every
/// filesystem has Unix permissions); the directory is the user's anyway.
fn restrict_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier as _;

    // The RFC 8291 Appendix A application-server key (a published test
    // key, not a secret) as SEC1 and as PKCS#8, both from `openssl ec` /
    // `openssl pkcs8 -topk8` of the same scalar.
    const SCALAR_HEX: &str = "c9f58f89813e9f8e872e71f42aa64e1757c9254dcc62b72ddc010bb4043ea11c";
    const PUBLIC_B64: &str =
        "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";

    fn key() -> VapidKey {
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&SCALAR_HEX[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        VapidKey {
            secret: SecretKey::from_slice(&bytes).unwrap(),
        }
    }

    #[test]
    fn sec1_and_pkcs8_of_one_key_give_the_same_application_server_key() {
        let k = key();
        assert_eq!(k.application_server_key(), PUBLIC_B64);
        let sec1 = k.secret.to_sec1_pem(LineEnding::LF).unwrap().to_string();
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{sec1}");
        let pkcs8 = k.to_pkcs8_pem();
        assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"), "{pkcs8}");
        let a = VapidKey::from_pem(&sec1).unwrap();
        let b = VapidKey::from_pem(&pkcs8).unwrap();
        assert_eq!(a.application_server_key(), PUBLIC_B64);
        assert_eq!(b.application_server_key(), PUBLIC_B64);
        assert_eq!(a.public_bytes().len(), 65);
        assert!(
            VapidKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
                .is_none()
        );
        assert!(!format!("{a:?}").contains(SCALAR_HEX));
    }

    #[test]
    fn jwt_audience_keeps_a_non_default_port_and_verifies() {
        let k = key();
        let url = url::Url::parse("http://127.0.0.1:8768/push/abc").unwrap();
        assert_eq!(audience(&url).as_deref(), Some("http://127.0.0.1:8768"));
        let fcm = url::Url::parse("https://fcm.googleapis.com:443/wp/x").unwrap();
        assert_eq!(
            audience(&fcm).as_deref(),
            Some("https://fcm.googleapis.com")
        );

        let now = 1_800_000_000;
        let jwt = k
            .jwt(
                &url,
                Some("mailto:me@example.com"),
                now,
                Duration::from_secs(48 * 3600),
            )
            .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "http://127.0.0.1:8768");
        assert_eq!(claims["sub"], "mailto:me@example.com");
        // Capped at 24 h although 48 h were asked for.
        assert_eq!(claims["exp"], now + 24 * 3600);
        let sig_bytes = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(sig_bytes.len(), 64);
        let sig = Signature::from_slice(&sig_bytes).unwrap();
        let vk = VerifyingKey::from_sec1_bytes(&k.public_bytes()).unwrap();
        vk.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();

        let auth = k
            .authorization(&url, None, now, Duration::from_secs(3600))
            .unwrap();
        assert!(auth.starts_with("vapid t=ey"), "{auth}");
        assert!(auth.ends_with(&format!(", k={PUBLIC_B64}")), "{auth}");
    }

    #[test]
    fn a_generated_key_is_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = VapidKey::load_or_generate(None, dir.path()).unwrap();
        let b = VapidKey::load_or_generate(None, dir.path()).unwrap();
        assert_eq!(a.application_server_key(), b.application_server_key());
        let path = dir.path().join("push-vapid.json");
        assert!(path.is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        // A configured file wins over the stored key.
        let pem = dir.path().join("k.pem");
        std::fs::write(&pem, key().to_pkcs8_pem()).unwrap();
        let c = VapidKey::load_or_generate(Some(&pem), dir.path()).unwrap();
        assert_eq!(c.application_server_key(), PUBLIC_B64);
        std::fs::write(&pem, "not a key").unwrap();
        let e = VapidKey::load_or_generate(Some(&pem), dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a P-256 private key"), "{e}");
    }
}
