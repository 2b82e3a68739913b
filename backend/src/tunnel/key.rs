//! WireGuard keys: 32-byte Curve25519 values, written as base64 in leases, config and the
//! key file (as flannel and `wg` write them) and as hex on the UAPI socket.
//!
//! The private key and the pre-shared key are secrets: their `Debug` prints
//! `[redacted]`, they have no `Display`, and their bytes are wiped when dropped. Only a
//! public key is ever printed.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The length of every WireGuard key.
pub const KEY_LEN: usize = 32;

/// A public key (a peer's, or this node's): printable.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

/// A secret key (a private key or a pre-shared key): never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

/// Why text is not a key. Never carries the text: it may be a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("it is not base64")]
    NotBase64,
    #[error("it is {0} bytes long, not 32")]
    Length(usize),
    #[error("it is all zeros")]
    Zero,
}

fn decode(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let bytes = Zeroizing::new(
        STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::NotBase64)?,
    );
    let key: [u8; KEY_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Length(bytes.len()))?;
    if key == [0; KEY_LEN] {
        return Err(KeyError::Zero);
    }
    Ok(key)
}

impl PublicKey {
    /// A key in base64 (44 characters); the zero key is refused (it is no peer's).
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        decode(text).map(PublicKey)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl SecretKey {
    /// A key in base64, e.g. a PSK from net-conf.json.
    pub fn parse(text: &str) -> Result<SecretKey, KeyError> {
        decode(text).map(SecretKey::from_bytes)
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SecretKey {
        SecretKey(Zeroizing::new(bytes))
    }

    /// A new private key from the operating system's CSPRNG, clamped as X25519 wants.
    pub fn generate() -> Result<SecretKey, std::io::Error> {
        use rand::TryRngCore as _;
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng
            .try_fill_bytes(bytes.as_mut())
            .map_err(std::io::Error::other)?;
        bytes[0] &= 248;
        bytes[31] = (bytes[31] & 127) | 64;
        Ok(SecretKey(bytes))
    }

    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The public key of this private key.
    pub fn public_key(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(*self.0);
        PublicKey(*x25519_dalek::PublicKey::from(&secret).as_bytes())
    }

    /// Base64, for the key file only.
    fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(*self.0))
    }

    /// Hex, for the UAPI socket only.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex(&*self.0))
    }
}

/// Hashes nothing of the secret (consistent with `Eq`: equal keys hash alike): no hash
/// of a key ever leaves memory, and the drift tracker that hashes devices needs none.
impl std::hash::Hash for SecretKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        KEY_LEN.hash(state);
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Lowercase hex, as the UAPI protocol writes keys.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key in lowercase or uppercase hex (the UAPI protocol's form).
pub fn from_hex(text: &str) -> Option<[u8; KEY_LEN]> {
    if text.len() != 2 * KEY_LEN || !text.is_ascii() {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

/// Why the private key file could not be used. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the WireGuard private key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the WireGuard private key file {path} holds no valid key: {reason} (delete it to have a new key generated)"
    )]
    Invalid { path: PathBuf, reason: KeyError },
    #[error("cannot write the WireGuard private key file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate a WireGuard private key: {0}")]
    Generate(#[source] std::io::Error),
}

/// How the private key was obtained, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    Read,
    /// Read, and the file's mode was narrowed to 0600 (it was readable by others).
    ReadAndNarrowed,
    Generated,
}

/// The node's private key: read from `path` (base64, as flannel writes `/run/flannel/wgkey`),
/// or generated and written there (mode 0600, atomically: a crash never leaves half a key).
pub fn load_or_create(path: &Path) -> Result<(SecretKey, KeyOrigin), KeyFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let key = SecretKey::parse(&text).map_err(|reason| KeyFileError::Invalid {
                path: path.to_path_buf(),
                reason,
            })?;
            Ok((key, narrow_mode(path)?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate().map_err(KeyFileError::Generate)?;
            write_key(path, &key).map_err(|source| KeyFileError::Write {
                path: path.to_path_buf(),
                source,
            })?;
            Ok((key, KeyOrigin::Generated))
        }
        Err(source) => Err(KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A key file readable by group or others is narrowed to 0600.
fn narrow_mode(path: &Path) -> Result<KeyOrigin, KeyFileError> {
    let error = |source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(error)?.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(KeyOrigin::Read);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(error)?;
    Ok(KeyOrigin::ReadAndNarrowed)
}

fn write_key(path: &Path, key: &SecretKey) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".tmp.{}", std::process::id()));
    let temp = PathBuf::from(temp);
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(key.to_base64().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7748 section 6.1: Alice's private and public key.
    const ALICE_PRIVATE: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const ALICE_PUBLIC: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";

    #[test]
    fn the_public_key_is_x25519_of_the_private_one() {
        let private = SecretKey::from_bytes(from_hex(ALICE_PRIVATE).unwrap());
        assert_eq!(private.public_key().to_hex(), ALICE_PUBLIC);
    }

    #[test]
    fn keys_round_trip_through_base64_and_hex() {
        let key = PublicKey(from_hex(ALICE_PUBLIC).unwrap());
        let text = key.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(PublicKey::parse(&text).unwrap(), key);
        assert_eq!(from_hex(&key.to_hex()), Some(key.0));
        assert_eq!(from_hex("zz"), None);
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        assert_eq!(PublicKey::parse("not base64!"), Err(KeyError::NotBase64));
        assert_eq!(PublicKey::parse("AAAA"), Err(KeyError::Length(3)));
        let zero = STANDARD.encode([0u8; 32]);
        assert_eq!(PublicKey::parse(&zero), Err(KeyError::Zero));
        let secret = SecretKey::parse(&STANDARD.encode([7u8; 32])).unwrap();
        assert_eq!(format!("{secret:?}"), "[redacted]");
    }

    #[test]
    fn a_missing_key_file_is_generated_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/wgkey");
        let (key, origin) = load_or_create(&path).unwrap();
        assert_eq!(origin, KeyOrigin::Generated);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, origin) = load_or_create(&path).unwrap();
        assert_eq!(origin, KeyOrigin::Read);
        assert_eq!(again.public_key(), key.public_key());
        // Clamped as X25519 private keys are.
        assert_eq!(key.bytes()[0] & 7, 0);
        assert_eq!(key.bytes()[31] & 0xc0, 0x40);
    }

    #[test]
    fn a_key_file_readable_by_others_is_narrowed_and_a_bad_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        std::fs::write(&path, format!("{}\n", STANDARD.encode([9u8; 32]))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_, origin) = load_or_create(&path).unwrap();
        assert_eq!(origin, KeyOrigin::ReadAndNarrowed);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        std::fs::write(&path, "secret-but-broken").unwrap();
        let error = load_or_create(&path).unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "the WireGuard private key file {} holds no valid key: it is not base64 \
                 (delete it to have a new key generated)",
                path.display()
            )
        );
        assert!(!error.contains("secret-but-broken"));
    }
}
