//! The key store: AES-256 keys inside a PKCS#11 token.
//!
//! Every version of the KEK is a secret AES key object on the token with the configured label
//! (`CKA_LABEL`, default `coffer-kek`) and its version number, 4 bytes big-endian, as `CKA_ID`.
//! The highest version is current. Keys are generated on the token (`rotate`), sensitive and
//! not extractable: they never leave it. Wrapping is `CKM_AES_GCM` inside the token with a fresh
//! 12-byte IV and the key_id as additional data; the ciphertext is `IV || ciphertext || tag`.
//!
//! The key_id is `pkcs11-` and 32 hex digits of SHA-256 over the token's serial number, the
//! key's label and id, and its check value (`CKA_CHECK_VALUE`, or, where the token has none, a
//! GCM tag of nothing under the key): public, stable across restarts, and different for a key
//! deleted and generated again under the same label and version.
//!
//! PKCS#11 calls block, so they run on tokio's blocking pool; one logged-in session serves them
//! in turn, and is opened again (once per call) if the token closed it.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use async_trait::async_trait;
use coffer_core::kms::{Kms, KmsError, KmsStatus, Wrapped};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;
const TAG_LEN: usize = 16;

/// Which token and key to use.
#[derive(Debug, Clone)]
pub(crate) struct TokenSettings {
    /// The PKCS#11 module (shared library).
    pub(crate) module: std::path::PathBuf,
    /// The token's label, or `None` to use `slot`.
    pub(crate) token_label: Option<String>,
    /// The slot id, when no token label is given.
    pub(crate) slot: Option<u64>,
    /// The label of the KEK's key objects.
    pub(crate) key_label: String,
}

/// One version of the KEK on the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyVersion {
    /// The version (`CKA_ID`).
    pub(crate) version: u32,
    /// Its key_id.
    pub(crate) key_id: String,
    handle: ObjectHandle,
}

/// A KEK held in a PKCS#11 token.
pub(crate) struct TokenKek {
    pkcs11: Pkcs11,
    slot: Slot,
    serial: String,
    settings: TokenSettings,
    pin: AuthPin,
    /// The logged-in session; `None` after the token closed it.
    session: Mutex<Option<Session>>,
    /// The key versions as last found, oldest first.
    keys: RwLock<Vec<KeyVersion>>,
}

impl std::fmt::Debug for TokenKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKek")
            .field("slot", &self.slot.id())
            .field("serial", &self.serial)
            .field("settings", &self.settings)
            .field("pin", &"[REDACTED]")
            .finish()
    }
}

/// A PKCS#11 error as a short message (the return value's name, not the standard's paragraph).
fn p11(e: &P11Error) -> String {
    match e {
        P11Error::Pkcs11(rv, function) => format!("{function}: {rv:?}"),
        other => other.to_string(),
    }
}

/// Whether an error means the session is gone and a new one may succeed.
fn session_lost(e: &P11Error) -> bool {
    matches!(
        e,
        P11Error::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::DeviceError,
            _
        )
    )
}

impl TokenKek {
    /// Loads the module, finds the token, logs in, and finds the key versions (there may be
    /// none yet: see [`TokenKek::rotate`]).
    pub(crate) fn open(settings: TokenSettings, pin: AuthPin) -> Result<Self, String> {
        let pkcs11 = Pkcs11::new(&settings.module).map_err(|e| {
            format!(
                "cannot load the PKCS#11 module {}: {}",
                settings.module.display(),
                p11(&e)
            )
        })?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(format!("C_Initialize: {}", p11(&e))),
        }
        let slots = pkcs11
            .get_slots_with_initialized_token()
            .map_err(|e| p11(&e))?;
        let mut found = None;
        let mut seen = Vec::new();
        for slot in slots {
            let info = pkcs11.get_token_info(slot).map_err(|e| p11(&e))?;
            seen.push(format!("slot {} {:?}", slot.id(), info.label()));
            let wanted = match (&settings.token_label, settings.slot) {
                (Some(label), _) => info.label() == label,
                (None, Some(id)) => slot.id() == id,
                (None, None) => false,
            };
            if wanted {
                found = Some((slot, info.serial_number().to_owned()));
                break;
            }
        }
        let (slot, serial) = found.ok_or_else(|| {
            format!(
                "no initialised token with {} (tokens: {})",
                match (&settings.token_label, settings.slot) {
                    (Some(l), _) => format!("label {l:?}"),
                    (None, Some(s)) => format!("slot id {s}"),
                    (None, None) => "a label or slot (give --token-label or --slot)".into(),
                },
                if seen.is_empty() {
                    "none".to_owned()
                } else {
                    seen.join(", ")
                }
            )
        })?;
        let kek = Self {
            pkcs11,
            slot,
            serial,
            settings,
            pin,
            session: Mutex::new(None),
            keys: RwLock::new(Vec::new()),
        };
        kek.with_session(|_| Ok(()))?;
        kek.find_keys()?;
        Ok(kek)
    }

    fn session_slot(&self) -> MutexGuard<'_, Option<Session>> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn login(&self) -> Result<Session, P11Error> {
        let session = self.pkcs11.open_rw_session(self.slot)?;
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e) => Err(e),
        }
    }

    /// Runs `f` with the logged-in session, logging in again once if the session was lost.
    fn with_session<T>(&self, f: impl Fn(&Session) -> Result<T, P11Error>) -> Result<T, String> {
        let mut slot = self.session_slot();
        for attempt in 0..2 {
            if slot.is_none() {
                *slot = Some(
                    self.login()
                        .map_err(|e| format!("cannot log in to the token: {}", p11(&e)))?,
                );
            }
            let Some(session) = slot.as_ref() else {
                continue;
            };
            match f(session) {
                Ok(v) => return Ok(v),
                Err(e) if attempt == 0 && session_lost(&e) => {
                    tracing::warn!(error = %p11(&e), "PKCS#11 session lost; logging in again");
                    *slot = None;
                }
                Err(e) => return Err(p11(&e)),
            }
        }
        Err("the PKCS#11 session could not be restored".into())
    }

    /// Finds the key versions on the token and remembers them.
    pub(crate) fn find_keys(&self) -> Result<Vec<KeyVersion>, String> {
        let label = self.settings.key_label.clone();
        let serial = self.serial.clone();
        let mut keys = self.with_session(|s| {
            let handles = s.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Label(label.as_bytes().to_vec()),
            ])?;
            let mut keys = Vec::with_capacity(handles.len());
            for handle in handles {
                let attrs =
                    s.get_attributes(handle, &[AttributeType::Id, AttributeType::CheckValue])?;
                let mut id = Vec::new();
                let mut check = Vec::new();
                for a in attrs {
                    match a {
                        Attribute::Id(v) => id = v,
                        Attribute::CheckValue(v) => check = v,
                        _ => {}
                    }
                }
                if check.is_empty() {
                    check = gcm_fingerprint(s, handle)?;
                }
                let version = <[u8; 4]>::try_from(id.as_slice()).map_or(0, u32::from_be_bytes);
                keys.push(KeyVersion {
                    version,
                    key_id: key_id(&serial, &label, &id, &check),
                    handle,
                });
            }
            Ok(keys)
        })?;
        keys.sort_by_key(|k| k.version);
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys.clone();
        Ok(keys)
    }

    fn known(&self) -> Vec<KeyVersion> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Generates the next version on the token (the first when there is none); it becomes
    /// current. Returns it.
    pub(crate) fn rotate(&self) -> Result<KeyVersion, String> {
        let keys = self.find_keys()?;
        let next = keys.last().map_or(1, |k| k.version + 1);
        let label = self.settings.key_label.clone();
        self.with_session(|s| {
            s.generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32u64.into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Label(label.as_bytes().to_vec()),
                    Attribute::Id(next.to_be_bytes().to_vec()),
                ],
            )
        })?;
        self.find_keys()?
            .into_iter()
            .find(|k| k.version == next)
            .ok_or_else(|| format!("version {next} was generated but cannot be found"))
    }

    /// Destroys an old version (never the current one); returns its key_id.
    pub(crate) fn destroy(&self, version: u32) -> Result<String, String> {
        let keys = self.find_keys()?;
        let Some(key) = keys.iter().find(|k| k.version == version) else {
            return Err(format!(
                "no version {version} with label {:?}",
                self.settings.key_label
            ));
        };
        if keys.last().map(|k| k.version) == Some(version) {
            return Err(format!(
                "version {version} is the current KEK; rotate first, migrate, then destroy it"
            ));
        }
        let handle = key.handle;
        self.with_session(|s| s.destroy_object(handle))?;
        self.find_keys()?;
        Ok(key.key_id.clone())
    }

    fn current(&self) -> Result<KeyVersion, KmsError> {
        self.known().last().cloned().ok_or_else(|| {
            KmsError::Unavailable(format!(
                "no AES key labelled {:?} on the token (run `coffer-kms-pkcs11 rotate` to generate one)",
                self.settings.key_label
            ))
        })
    }

    fn wrap(&self, plaintext: &[u8]) -> Result<Wrapped, KmsError> {
        let key = self.current()?;
        let mut iv = [0u8; IV_LEN];
        rand::rngs::OsRng.fill_bytes(&mut iv);
        let aad = key.key_id.clone();
        let ct = self
            .with_session(|s| {
                let mut iv = iv;
                let params = GcmParams::new(&mut iv, aad.as_bytes(), TAG_BITS.into())?;
                s.encrypt(&Mechanism::AesGcm(params), key.handle, plaintext)
            })
            .map_err(|e| KmsError::Unavailable(format!("token encrypt failed: {e}")))?;
        let mut ciphertext = iv.to_vec();
        ciphertext.extend_from_slice(&ct);
        Ok(Wrapped {
            ciphertext,
            key_id: key.key_id,
            annotations: Default::default(),
        })
    }

    fn unwrap_(&self, wrapped: &Wrapped) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let find = |keys: Vec<KeyVersion>| keys.into_iter().find(|k| k.key_id == wrapped.key_id);
        let key = match find(self.known()) {
            Some(k) => k,
            None => find(self.find_keys().map_err(KmsError::Unavailable)?).ok_or_else(|| {
                KmsError::Rejected(format!(
                    "unknown key_id {:?}: no key labelled {:?} on the token has it (destroyed, or never this plugin's)",
                    wrapped.key_id.chars().take(128).collect::<String>(),
                    self.settings.key_label
                ))
            })?,
        };
        if wrapped.ciphertext.len() < IV_LEN + TAG_LEN {
            return Err(KmsError::Rejected(format!(
                "ciphertext is {} bytes, too short for IV and tag",
                wrapped.ciphertext.len()
            )));
        }
        let (iv, ct) = wrapped.ciphertext.split_at(IV_LEN);
        let aad = key.key_id.clone();
        let result = {
            let slot = &mut *self.session_slot();
            // Inline rather than with_session: an integrity failure must not be retried.
            let session = match slot.take() {
                Some(s) => s,
                None => self.login().map_err(|e| {
                    KmsError::Unavailable(format!("cannot log in to the token: {}", p11(&e)))
                })?,
            };
            let mut iv_buf = [0u8; IV_LEN];
            iv_buf.copy_from_slice(iv);
            let r = GcmParams::new(&mut iv_buf, aad.as_bytes(), TAG_BITS.into())
                .and_then(|params| session.decrypt(&Mechanism::AesGcm(params), key.handle, ct));
            if !matches!(&r, Err(e) if session_lost(e)) {
                *slot = Some(session);
            }
            r
        };
        match result {
            Ok(pt) => Ok(Zeroizing::new(pt)),
            // SoftHSM2 reports a GCM tag mismatch as CKR_GENERAL_ERROR; a token may also say
            // CKR_FUNCTION_FAILED. With a key that exists and a well-formed request, these mean
            // the ciphertext does not authenticate.
            Err(P11Error::Pkcs11(
                rv @ (RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::GeneralError
                | RvError::FunctionFailed),
                _,
            )) => Err(KmsError::Rejected(format!(
                "ciphertext failed its integrity check (token: {rv:?})"
            ))),
            Err(e) if session_lost(&e) => Err(KmsError::Unavailable(format!(
                "token session lost during decrypt: {}",
                p11(&e)
            ))),
            Err(e) => Err(KmsError::Rejected(format!(
                "token decrypt failed: {}",
                p11(&e)
            ))),
        }
    }
}

/// A fingerprint for a key without `CKA_CHECK_VALUE`: the GCM tag of an empty message under a
/// fixed IV and label. Only this one input is ever used with that IV, so nothing else leaks.
fn gcm_fingerprint(s: &Session, key: ObjectHandle) -> Result<Vec<u8>, P11Error> {
    let mut iv = [0u8; IV_LEN];
    let params = GcmParams::new(
        &mut iv,
        b"coffer pkcs11 key fingerprint v1",
        TAG_BITS.into(),
    )?;
    s.encrypt(&Mechanism::AesGcm(params), key, &[])
}

fn key_id(serial: &str, label: &str, id: &[u8], check: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"coffer pkcs11 kek id v1\0");
    for part in [serial.as_bytes(), label.as_bytes(), id, check] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    format!("pkcs11-{}", hex::encode(&h.finalize()[..16]))
}

/// Runs a blocking token call on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    kek: &Arc<TokenKek>,
    f: impl FnOnce(&TokenKek) -> Result<T, KmsError> + Send + 'static,
) -> Result<T, KmsError> {
    let kek = kek.clone();
    tokio::task::spawn_blocking(move || f(&kek))
        .await
        .map_err(|e| KmsError::Unavailable(format!("token call failed: {e}")))?
}

/// The [`Kms`] over a shared [`TokenKek`].
#[derive(Debug, Clone)]
pub(crate) struct TokenKms(pub(crate) Arc<TokenKek>);

#[async_trait]
impl Kms for TokenKms {
    async fn status(&self) -> Result<KmsStatus, KmsError> {
        // Looking the keys up again checks the session and picks up a rotation.
        blocking(&self.0, |k| {
            k.find_keys().map_err(KmsError::Unavailable)?;
            let current = k.current()?;
            Ok(KmsStatus {
                version: coffer_core::kms::KMS_API_VERSION.into(),
                healthz: "ok".into(),
                key_id: current.key_id,
            })
        })
        .await
    }

    async fn encrypt(&self, _uid: &str, plaintext: &[u8]) -> Result<Wrapped, KmsError> {
        let plaintext = Zeroizing::new(plaintext.to_vec());
        blocking(&self.0, move |k| k.wrap(&plaintext)).await
    }

    async fn decrypt(&self, _uid: &str, wrapped: &Wrapped) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let wrapped = wrapped.clone();
        blocking(&self.0, move |k| k.unwrap_(&wrapped)).await
    }

    fn describe(&self) -> String {
        format!(
            "PKCS#11 token {} (slot {}), key label {:?}",
            self.0
                .settings
                .token_label
                .as_deref()
                .map_or_else(|| "?".to_owned(), |l| format!("{l:?}")),
            self.0.slot.id(),
            self.0.settings.key_label
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_stable_public_and_change_with_the_key() {
        let a = key_id("serial1", "coffer-kek", &1u32.to_be_bytes(), &[1, 2, 3]);
        assert_eq!(
            a,
            key_id("serial1", "coffer-kek", &1u32.to_be_bytes(), &[1, 2, 3])
        );
        assert!(a.starts_with("pkcs11-") && a.len() == 7 + 32, "{a}");
        // A key generated again under the same label and version has another check value.
        assert_ne!(
            a,
            key_id("serial1", "coffer-kek", &1u32.to_be_bytes(), &[9, 9, 9])
        );
        assert_ne!(
            a,
            key_id("serial2", "coffer-kek", &1u32.to_be_bytes(), &[1, 2, 3])
        );
        // Length prefixes keep field boundaries apart.
        assert_ne!(key_id("ab", "c", &[], &[]), key_id("a", "bc", &[], &[]));
    }
}
