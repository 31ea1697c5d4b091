//! The PKCS#11 backend: the KEK is an AES-256 secret key generated inside a token (an HSM, or
//! SoftHSM2 in tests) and never leaves it.
//!
//! **Keys.** Each KEK is a token object (`CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE` true,
//! `CKA_EXTRACTABLE` false, encrypt/decrypt only) with the configured `CKA_LABEL` and a
//! `CKA_ID` of 20 bytes: a 4-byte big-endian generation followed by 16 random bytes. The key
//! with the highest generation is current; `rotate` generates the next one and older keys stay
//! for Decrypt. The key_id is `coffer-pkcs11-<generation>-<hex>`, where `<hex>` is the first
//! 16 bytes of SHA-256 over the token's serial number and the `CKA_ID`: stable for a key,
//! different for every key of every token, and no private identifier in clear.
//!
//! **Wrapping.** `CKM_AES_GCM` inside the token, a fresh random 12-byte IV per call, a 128-bit
//! tag and the key_id as additional authenticated data (a ciphertext moved under another
//! key_id fails). Ciphertext: `0x01 ‖ IV(12) ‖ AES-GCM(seed) ‖ tag(16)`, 61 bytes for a
//! 32-byte seed. The mechanism is checked when the token is opened.
//!
//! **Sessions.** One read-write session, logged in as the user, serialised by a mutex
//! (KMS v2 calls Encrypt and Decrypt rarely). When a call fails because the session or token
//! went away (handle invalid or closed, not logged in, device removed or in error, token not
//! present) the backend opens a new session, logs in again and retries once; a stale key
//! handle reloads the key list and retries once.
//!
//! The PIN lives in [`Pin`] (a zeroizing secret with a redacted `Debug`) and appears in no
//! error or log. Once the token refuses it (incorrect, locked, expired), the backend never
//! sends it again: every call fails saying to fix the PIN and restart, so a PIN changed under
//! a running plugin cannot lock the token through retries.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::backend::{Backend, Wrapped};
use super::PluginError;

/// The annotation value of PKCS#11 ciphertexts.
pub const PKCS11_FORMAT: &str = "coffer-pkcs11-aes256gcm-v1";
/// First byte of a wrapped seed.
const WRAP_VERSION: u8 = 1;
/// AES-GCM IV length.
const IV_LEN: usize = 12;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;
/// Length of a KEK's `CKA_ID`: generation (4) and random bytes (16).
const ID_LEN: usize = 20;
/// Shortest time between two re-initialisations of the module looking for a missing token
/// (`C_Initialize` of a network HSM's module can take seconds).
const RESCAN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest PIN file read (a PIN is a line; anything longer is the wrong file).
const MAX_PIN_FILE_LEN: u64 = 4096;

/// Which token to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token with this label (`CKA_LABEL` of the token, trailing spaces ignored).
    Label(String),
    /// The token in this slot.
    Slot(u64),
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "{l:?}"),
            TokenSelector::Slot(s) => write!(f, "in slot {s}"),
        }
    }
}

/// A token user PIN. Zeroized on drop; never shown.
pub struct Pin(AuthPin);

impl Pin {
    /// A PIN from memory (the text is wiped by the caller's zeroizing buffer).
    pub fn new(pin: &str) -> Self {
        Pin(AuthPin::from(pin))
    }

    /// Reads the PIN from a file (one line; a trailing newline is dropped). Refuses a file
    /// that group or others may read or write, as the key-file backend does.
    pub fn from_file(path: &Path) -> Result<Self, PluginError> {
        use std::io::Read as _;
        use std::os::unix::fs::MetadataExt as _;
        let io = |what: &str| {
            let context = format!("cannot {what} the PIN file {}", path.display());
            move |source| PluginError::Io { context, source }
        };
        let file = std::fs::File::open(path).map_err(io("open"))?;
        let meta = file.metadata().map_err(io("inspect"))?;
        if !meta.is_file() {
            return Err(PluginError::Config(format!(
                "the PIN file {} is not a regular file",
                path.display()
            )));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(PluginError::Config(format!(
                "the PIN file {} has mode {mode:04o}: group or others may read it; \
                 `chmod 600` it (from a Kubernetes Secret volume, set defaultMode: 0400)",
                path.display()
            )));
        }
        // Room for the whole read up front: no smaller buffer or reallocation ever holds a
        // copy of the PIN that is not wiped.
        let mut text = Zeroizing::new(String::with_capacity(MAX_PIN_FILE_LEN as usize + 1));
        file.take(MAX_PIN_FILE_LEN + 1)
            .read_to_string(&mut text)
            .map_err(io("read"))?;
        if text.len() as u64 > MAX_PIN_FILE_LEN {
            return Err(PluginError::Config(format!(
                "the PIN file {} is longer than {MAX_PIN_FILE_LEN} bytes: is it the right file?",
                path.display()
            )));
        }
        let pin = text.trim_end_matches(['\n', '\r']);
        if pin.is_empty() {
            return Err(PluginError::Config(format!(
                "the PIN file {} is empty",
                path.display()
            )));
        }
        Ok(Self::new(pin))
    }

    /// Reads the PIN from the environment variable `name`.
    pub fn from_env(name: &str) -> Result<Self, PluginError> {
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => {
                let v = Zeroizing::new(v);
                Ok(Self::new(&v))
            }
            _ => Err(PluginError::Config(format!(
                "the environment variable {name} (the token PIN) is not set or empty"
            ))),
        }
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(redacted)")
    }
}

/// Where the token is and how to log in.
#[derive(Debug)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token.
    pub token: TokenSelector,
    /// The user PIN.
    pub pin: Pin,
    /// `CKA_LABEL` of the KEKs.
    pub key_label: String,
}

/// One KEK in the token.
#[derive(Debug, Clone)]
struct Kek {
    generation: u32,
    key_id: String,
    handle: ObjectHandle,
}

/// An open, logged-in session and the token's KEKs (oldest first).
struct Conn {
    session: Session,
    serial: String,
    keys: Vec<Kek>,
}

/// Why an operation inside a session failed.
enum OpError {
    /// A PKCS#11 call failed.
    Ck(&'static str, CkError),
    /// Anything else, already described.
    Plugin(PluginError),
}

impl From<PluginError> for OpError {
    fn from(e: PluginError) -> Self {
        OpError::Plugin(e)
    }
}

/// Wraps a cryptoki result with the operation's name.
fn ck<T>(operation: &'static str, r: Result<T, CkError>) -> Result<T, OpError> {
    r.map_err(|e| OpError::Ck(operation, e))
}

/// The KEK store in a PKCS#11 token.
pub struct Pkcs11Backend {
    config: Pkcs11Config,
    ctx: Pkcs11,
    conn: Mutex<Option<Conn>>,
    /// The newest KEK seen so far: (generation, key_id). Status reports this key_id through
    /// outages, and a refresh that finds only older keys fails (the current key was deleted).
    newest: Mutex<Option<(u32, String)>>,
    /// Set when the token refused the PIN: why. Login is never tried again in this process
    /// (each wrong try counts toward the token locking the PIN).
    pin_refused: Mutex<Option<String>>,
    /// When the module was last re-initialised to look for a missing token.
    last_rescan: Mutex<Option<std::time::Instant>>,
    rng: SystemRandom,
}

impl fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Errors after which a new session (and login) may succeed.
fn needs_reconnect(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::SlotIdInvalid,
            _
        )
    )
}

/// The token refused the PIN itself (retrying it can only lock the token).
fn pin_rejected(rv: &RvError) -> bool {
    matches!(
        rv,
        RvError::PinIncorrect
            | RvError::PinLocked
            | RvError::PinExpired
            | RvError::PinLenRange
            | RvError::PinInvalid
    )
}

/// Errors after which reloading the key list may help.
fn stale_handle(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _)
    )
}

/// A short name for a PKCS#11 return value.
fn rv_name(rv: &RvError) -> String {
    let name = match rv {
        RvError::PinIncorrect => "the PIN is incorrect (CKR_PIN_INCORRECT)",
        RvError::PinLocked => "the PIN is locked (CKR_PIN_LOCKED)",
        RvError::PinExpired => "the PIN has expired (CKR_PIN_EXPIRED)",
        RvError::PinLenRange => "the PIN has the wrong length (CKR_PIN_LEN_RANGE)",
        RvError::TokenNotPresent => "the token is not present (CKR_TOKEN_NOT_PRESENT)",
        RvError::DeviceRemoved => "the token was removed (CKR_DEVICE_REMOVED)",
        RvError::DeviceError => "the token reported a device error (CKR_DEVICE_ERROR)",
        RvError::SessionHandleInvalid => "the session is gone (CKR_SESSION_HANDLE_INVALID)",
        RvError::UserNotLoggedIn => "not logged in (CKR_USER_NOT_LOGGED_IN)",
        RvError::EncryptedDataInvalid => {
            "the ciphertext does not authenticate (CKR_ENCRYPTED_DATA_INVALID)"
        }
        RvError::MechanismInvalid => "the mechanism is not supported (CKR_MECHANISM_INVALID)",
        other => return format!("{other:?}"),
    };
    name.to_owned()
}

/// The public key_id of a KEK.
fn key_id(serial: &str, id: &[u8], generation: u32) -> String {
    let mut h = Sha256::new();
    h.update(b"coffer kms-plugin pkcs11 key_id v1\0");
    for part in [serial.as_bytes(), id] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    format!(
        "coffer-pkcs11-{generation}-{}",
        hex::encode(&h.finalize()[..16])
    )
}

impl Pkcs11Backend {
    /// Loads the module, finds the token, checks that it does AES-256-GCM, and logs in.
    /// The token may hold no KEK yet (see [`Pkcs11Backend::rotate`]).
    pub fn open(config: Pkcs11Config) -> Result<Self, PluginError> {
        Self::open_with(config, false)
    }

    /// [`Pkcs11Backend::open`] for a server that may start before its token: when the token
    /// cannot be reached yet (not present, a device error), the backend is returned anyway
    /// and every call tries to connect until it appears. A module that does not load, a PIN
    /// the token refuses or a missing mechanism is still an error.
    pub fn open_waiting_for_token(config: Pkcs11Config) -> Result<Self, PluginError> {
        Self::open_with(config, true)
    }

    fn open_with(config: Pkcs11Config, wait_for_token: bool) -> Result<Self, PluginError> {
        let ctx = Pkcs11::new(&config.module).map_err(|e| {
            PluginError::Config(format!(
                "cannot load the PKCS#11 module {}: {e}",
                config.module.display()
            ))
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            // Another part of this process opened the module first.
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
            Err(e) => Err(e),
        }
        .map_err(|e| {
            PluginError::Config(format!(
                "cannot initialise the PKCS#11 module {}: {e}",
                config.module.display()
            ))
        })?;
        let backend = Self {
            config,
            ctx,
            conn: Mutex::new(None),
            newest: Mutex::new(None),
            pin_refused: Mutex::new(None),
            last_rescan: Mutex::new(None),
            rng: SystemRandom::new(),
        };
        match backend.connect() {
            Ok(conn) => {
                info!(
                    token = %backend.config.token,
                    keys = conn.keys.len(),
                    "PKCS#11 token opened"
                );
                *lock(&backend.conn) = Some(conn);
            }
            // The caller reports it (the plugin's start warning, then unhealthy Status).
            Err(PluginError::Unavailable(why)) if wait_for_token => {
                tracing::debug!(token = %backend.config.token, reason = %why,
                    "the PKCS#11 token cannot be reached yet; each call tries again");
            }
            Err(e) => return Err(e),
        }
        Ok(backend)
    }

    fn token_name(&self) -> String {
        format!("PKCS#11 token {}", self.config.token)
    }

    fn error(&self, operation: &str, e: &CkError) -> PluginError {
        let reason = match e {
            CkError::Pkcs11(rv, _) => rv_name(rv),
            other => other.to_string(),
        };
        let message = format!("{}: {operation}: {reason}", self.token_name());
        match e {
            CkError::Pkcs11(rv, _) if pin_rejected(rv) || *rv == RvError::MechanismInvalid => {
                PluginError::Config(message)
            }
            e if needs_reconnect(e) => PluginError::Unavailable(message),
            _ => PluginError::Internal(message),
        }
    }

    fn find_slot(&self) -> Result<Slot, PluginError> {
        let slots = self
            .ctx
            .get_slots_with_token()
            .map_err(|e| self.error("list the slots", &e))?;
        let found = match &self.config.token {
            TokenSelector::Slot(id) => slots.into_iter().find(|s| s.id() == *id),
            TokenSelector::Label(label) => slots.into_iter().find(|s| {
                self.ctx
                    .get_token_info(*s)
                    .is_ok_and(|t| t.label().trim_end() == label)
            }),
        };
        found.ok_or_else(|| {
            PluginError::Unavailable(format!(
                "{} not found (module {}): is the token present and initialised?",
                self.token_name(),
                self.config.module.display()
            ))
        })
    }

    fn check_mechanism(&self, slot: Slot, mechanism: MechanismType) -> Result<(), PluginError> {
        let name = if mechanism == MechanismType::AES_GCM {
            "CKM_AES_GCM"
        } else {
            "CKM_AES_KEY_GEN"
        };
        let unsupported = || {
            PluginError::Config(format!(
                "{} does not support {name}, which Coffer's PKCS#11 backend needs (AES-256 keys \
                 generated in the token, seeds wrapped with AES-GCM inside it)",
                self.token_name()
            ))
        };
        // Asked directly: listing every mechanism makes cryptoki log each type it does not
        // know as an error.
        let info = match self.ctx.get_mechanism_info(slot, mechanism) {
            Ok(info) => info,
            Err(CkError::Pkcs11(RvError::MechanismInvalid, _)) => return Err(unsupported()),
            Err(e) => return Err(self.error("read the mechanism information", &e)),
        };
        let usable = if mechanism == MechanismType::AES_GCM {
            info.encrypt() && info.decrypt()
        } else {
            info.generate()
        };
        // Key sizes are in bytes for AES (PKCS#11 2.40); some modules report bits.
        if !usable || info.max_key_size() < 32 {
            return Err(unsupported());
        }
        Ok(())
    }

    /// [`Pkcs11Backend::find_slot`]; when the token is not there, re-initialises the module
    /// (at most every [`RESCAN_INTERVAL`]) and looks again: modules such as SoftHSM2 list only
    /// the tokens they saw at `C_Initialize`. Called only with no connection open (no session
    /// of this backend is alive; calls are serialised by the connection lock).
    fn find_slot_rescanning(&self) -> Result<Slot, PluginError> {
        let not_found = match self.find_slot() {
            Err(PluginError::Unavailable(why)) => why,
            other => return other,
        };
        let mut last = lock(&self.last_rescan);
        if last.is_some_and(|t| t.elapsed() < RESCAN_INTERVAL) {
            return Err(PluginError::Unavailable(not_found));
        }
        *last = Some(std::time::Instant::now());
        let _ = self.ctx.clone().finalize();
        self.ctx
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(|e| self.error("re-initialise the module to look for the token", &e))?;
        self.find_slot()
    }

    /// Opens a session, logs in and lists the KEKs.
    fn connect(&self) -> Result<Conn, PluginError> {
        let slot = self.find_slot_rescanning()?;
        self.check_mechanism(slot, MechanismType::AES_GCM)?;
        let serial = self
            .ctx
            .get_token_info(slot)
            .map_err(|e| self.error("read the token information", &e))?
            .serial_number()
            .trim_end()
            .to_owned();
        let session = self
            .ctx
            .open_rw_session(slot)
            .map_err(|e| self.error("open a session", &e))?;
        match self.login(&session) {
            Ok(()) => {}
            Err(OpError::Plugin(e)) => return Err(e),
            Err(OpError::Ck(op, e)) => return Err(self.error(op, &e)),
        }
        let keys = self
            .list_keys(&session, &serial)
            .map_err(|e| self.error("list the keys", &e))?;
        Ok(Conn {
            session,
            serial,
            keys,
        })
    }

    /// The KEKs with the configured label, oldest first. Objects with the label but another
    /// `CKA_ID` shape are not Coffer's and are skipped.
    fn list_keys(&self, session: &Session, serial: &str) -> Result<Vec<Kek>, CkError> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(self.config.key_label.as_bytes().to_vec()),
        ];
        let mut keys = Vec::new();
        for handle in session.find_objects(&template)? {
            let attrs = session.get_attributes(handle, &[AttributeType::Id])?;
            let Some(id) = attrs.into_iter().find_map(|a| match a {
                Attribute::Id(id) => Some(id),
                _ => None,
            }) else {
                continue;
            };
            let Some(generation) = id
                .first_chunk::<4>()
                .filter(|_| id.len() == ID_LEN)
                .map(|g| u32::from_be_bytes(*g))
            else {
                warn!(
                    label = %self.config.key_label,
                    "skipping a key with the KEK label whose CKA_ID Coffer did not make"
                );
                continue;
            };
            keys.push(Kek {
                generation,
                key_id: key_id(serial, &id, generation),
                handle,
            });
        }
        keys.sort_by(|a, b| (a.generation, &a.key_id).cmp(&(b.generation, &b.key_id)));
        Ok(keys)
    }

    /// Runs `f` on the session, reconnecting (new session, login) or reloading the key list
    /// once when the failure calls for it.
    fn with_conn<T>(
        &self,
        f: impl Fn(&Self, &mut Conn) -> Result<T, OpError>,
    ) -> Result<T, PluginError> {
        let mut guard = lock(&self.conn);
        let mut retried = false;
        loop {
            let conn = match guard.as_mut() {
                Some(c) => c,
                None => guard.insert(self.connect()?),
            };
            match self.ensure_user(conn).and_then(|()| f(self, conn)) {
                Ok(v) => return Ok(v),
                Err(OpError::Plugin(e)) => return Err(e),
                Err(OpError::Ck(op, e)) if !retried && needs_reconnect(&e) => {
                    warn!(token = %self.config.token, operation = op, error = %rv_summary(&e),
                        "PKCS#11 session lost; reconnecting and retrying once");
                    coffer_metrics::kms::plugin()
                        .backend_errors
                        .with_label_values(&["session"])
                        .inc();
                    *guard = None;
                }
                Err(OpError::Ck(op, e)) if !retried && stale_handle(&e) => {
                    warn!(token = %self.config.token, operation = op,
                        "a key handle went stale; reloading the key list and retrying once");
                    let serial = conn.serial.clone();
                    conn.keys = self
                        .list_keys(&conn.session, &serial)
                        .map_err(|e| self.error("list the keys", &e))?;
                }
                Err(OpError::Ck(op, e)) => {
                    if needs_reconnect(&e) {
                        *guard = None;
                    }
                    return Err(self.error(op, &e));
                }
            }
            retried = true;
        }
    }

    /// Checks that the session is still there and logged in as the user (another session of
    /// this process, or the token, may have logged out: private keys are then invisible, not
    /// an error), and logs in again if not.
    fn ensure_user(&self, conn: &Conn) -> Result<(), OpError> {
        let info = ck("check the session", conn.session.get_session_info())?;
        if matches!(
            info.session_state(),
            SessionState::RoUser | SessionState::RwUser
        ) {
            return Ok(());
        }
        warn!(token = %self.config.token, "the PKCS#11 session is logged out; logging in again");
        coffer_metrics::kms::plugin()
            .backend_errors
            .with_label_values(&["session"])
            .inc();
        self.login(&conn.session)
    }

    /// Logs `session`'s application in as the user, unless the token refused this PIN before:
    /// then nothing is sent to the token, and the error says to fix the PIN and restart.
    fn login(&self, session: &Session) -> Result<(), OpError> {
        let mut refused = lock(&self.pin_refused);
        if let Some(why) = refused.as_ref() {
            return Err(OpError::Plugin(PluginError::Config(why.clone())));
        }
        match session.login(UserType::User, Some(&self.config.pin.0)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e @ CkError::Pkcs11(rv, _)) if pin_rejected(&rv) => {
                let why = format!(
                    "{}: log in: {}; the plugin does not try this PIN again (each wrong try \
                     counts toward the token locking it): fix the PIN and restart the plugin",
                    self.token_name(),
                    rv_name(&rv)
                );
                warn!(token = %self.config.token, error = %rv_summary(&e),
                    "the token refused the PIN; no further login attempts");
                *refused = Some(why.clone());
                Err(OpError::Plugin(PluginError::Config(why)))
            }
            Err(e) => Err(OpError::Ck("log in", e)),
        }
    }

    /// Generates a new KEK (the next generation), which becomes current; older KEKs stay for
    /// Decrypt. On an empty token this creates the first one. Returns the new key_id.
    pub fn rotate(&self) -> Result<String, PluginError> {
        let slot = self.find_slot()?;
        self.check_mechanism(slot, MechanismType::AES_KEY_GEN)?;
        let key_id = self.with_conn(|this, c| {
            c.keys = ck("list the keys", this.list_keys(&c.session, &c.serial))?;
            let generation = c.keys.last().map_or(1, |k| k.generation.saturating_add(1));
            let mut id = vec![0u8; ID_LEN];
            id[..4].copy_from_slice(&generation.to_be_bytes());
            this.rng
                .fill(&mut id[4..])
                .map_err(|_| PluginError::Internal("the system random source failed".to_owned()))?;
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Label(this.config.key_label.as_bytes().to_vec()),
                Attribute::Id(id.clone()),
            ];
            ck(
                "generate an AES-256 key",
                c.session.generate_key(&Mechanism::AesKeyGen, &template),
            )?;
            // The refresh below lists the keys again.
            Ok(key_id(&c.serial, &id, generation))
        })?;
        *lock(&self.newest) = None;
        self.refresh()?;
        Ok(key_id)
    }

    /// The key_ids of every KEK in the token, oldest first.
    pub fn key_ids(&self) -> Result<Vec<String>, PluginError> {
        self.with_conn(|this, c| {
            c.keys = ck("list the keys", this.list_keys(&c.session, &c.serial))?;
            Ok(c.keys.iter().map(|k| k.key_id.clone()).collect())
        })
    }
}

/// A log-safe one-line summary of a cryptoki error.
fn rv_summary(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{function:?}: {}", rv_name(rv)),
        other => other.to_string(),
    }
}

impl Backend for Pkcs11Backend {
    fn describe(&self) -> String {
        self.token_name()
    }

    fn format(&self) -> &'static str {
        PKCS11_FORMAT
    }

    fn accepts_unannotated(&self) -> bool {
        false
    }

    fn refresh(&self) -> Result<String, PluginError> {
        let newest = self.with_conn(|this, c| {
            c.keys = ck("list the keys", this.list_keys(&c.session, &c.serial))?;
            Ok(c.keys.last().map(|k| (k.generation, k.key_id.clone())))
        })?;
        if newest.is_none() {
            // An empty list may mean the token itself is gone: say so when it is.
            self.find_slot()?;
        }
        let mut seen = lock(&self.newest);
        if let Some((seen_generation, seen_key_id)) = seen.as_ref() {
            if newest
                .as_ref()
                .is_none_or(|(generation, _)| generation < seen_generation)
            {
                return Err(PluginError::Unavailable(format!(
                    "{}: the current key-encryption key ({}) is gone from the token",
                    self.token_name(),
                    coffer_metrics::kms::key_id_hash(seen_key_id)
                )));
            }
        }
        let Some((generation, key_id)) = newest else {
            return Err(PluginError::Unavailable(format!(
                "{} holds no key-encryption key labelled {:?}: create one with `coffer \
                 kms-plugin rotate`",
                self.token_name(),
                self.config.key_label
            )));
        };
        *seen = Some((generation, key_id.clone()));
        Ok(key_id)
    }

    fn current_key_id(&self) -> Option<String> {
        lock(&self.newest).as_ref().map(|(_, k)| k.clone())
    }

    fn wrap(&self, plaintext: &[u8]) -> Result<Wrapped, PluginError> {
        let current = self.current_key_id();
        self.with_conn(|this, c| {
            let kek = match &current {
                Some(id) => c.keys.iter().rev().find(|k| &k.key_id == id),
                None => c.keys.last(),
            }
            .cloned()
            .ok_or_else(|| {
                PluginError::Unavailable(format!(
                    "{}: the current key-encryption key is not in the token",
                    this.token_name()
                ))
            })?;
            let mut iv = [0u8; IV_LEN];
            this.rng
                .fill(&mut iv)
                .map_err(|_| PluginError::Internal("the system random source failed".to_owned()))?;
            let mut iv_param = iv;
            let params = ck(
                "set up AES-GCM",
                GcmParams::new(&mut iv_param, kek.key_id.as_bytes(), 128.into()),
            )?;
            let sealed = ck(
                "wrap (CKM_AES_GCM encrypt)",
                c.session
                    .encrypt(&Mechanism::AesGcm(params), kek.handle, plaintext),
            )?;
            let mut ciphertext = Vec::with_capacity(1 + IV_LEN + sealed.len());
            ciphertext.push(WRAP_VERSION);
            ciphertext.extend_from_slice(&iv);
            ciphertext.extend_from_slice(&sealed);
            Ok(Wrapped {
                ciphertext,
                key_id: kek.key_id,
            })
        })
    }

    fn unwrap(&self, key_id: &str, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, PluginError> {
        if ciphertext.len() < 1 + IV_LEN + TAG_LEN || ciphertext[0] != WRAP_VERSION {
            return Err(PluginError::InvalidArgument(
                "the ciphertext is not a seed wrapped by Coffer's PKCS#11 backend".to_owned(),
            ));
        }
        let (iv, sealed) = ciphertext[1..].split_at(IV_LEN);
        self.with_conn(|this, c| {
            let mut kek = c.keys.iter().find(|k| k.key_id == key_id).cloned();
            if kek.is_none() {
                // A key made by `rotate` in another process since the last refresh.
                c.keys = ck("list the keys", this.list_keys(&c.session, &c.serial))?;
                kek = c.keys.iter().find(|k| k.key_id == key_id).cloned();
            }
            let kek = kek.ok_or_else(|| {
                PluginError::NotFound(format!(
                    "key_id {} was not issued by {} (or its key was deleted)",
                    coffer_metrics::kms::key_id_hash(key_id),
                    this.token_name()
                ))
            })?;
            let mut iv_param = [0u8; IV_LEN];
            iv_param.copy_from_slice(iv);
            let params = ck(
                "set up AES-GCM",
                GcmParams::new(&mut iv_param, kek.key_id.as_bytes(), 128.into()),
            )?;
            match c
                .session
                .decrypt(&Mechanism::AesGcm(params), kek.handle, sealed)
            {
                Ok(plain) => Ok(Zeroizing::new(plain)),
                Err(CkError::Pkcs11(
                    RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange
                    | RvError::FunctionFailed,
                    _,
                )) => Err(OpError::Plugin(PluginError::InvalidArgument(format!(
                    "the ciphertext does not authenticate under key_id {}",
                    coffer_metrics::kms::key_id_hash(key_id)
                )))),
                // SoftHSM2 reports a failed GCM tag check as CKR_GENERAL_ERROR.
                Err(CkError::Pkcs11(RvError::GeneralError, _)) => {
                    Err(OpError::Plugin(PluginError::InvalidArgument(format!(
                        "the token refused to unwrap the ciphertext under key_id {} \
                         (CKR_GENERAL_ERROR): it does not authenticate, or the token failed",
                        coffer_metrics::kms::key_id_hash(key_id)
                    ))))
                }
                Err(e) => Err(OpError::Ck("unwrap (CKM_AES_GCM decrypt)", e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_differ_by_token_and_id_and_hide_both() {
        let a = key_id("serial-a", &[1; 20], 1);
        assert_eq!(a, key_id("serial-a", &[1; 20], 1));
        assert_ne!(a, key_id("serial-b", &[1; 20], 1));
        assert_ne!(a, key_id("serial-a", &[2; 20], 1));
        assert!(
            a.starts_with("coffer-pkcs11-1-") && a.len() == 16 + 32,
            "{a}"
        );
        assert!(!a.contains("serial"));
    }

    #[test]
    fn a_pin_file_others_may_read_is_refused_naming_file_and_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "s3cret-pin\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Pin::from_file(&path).unwrap_err().to_string();
            assert!(
                e.contains(&path.display().to_string())
                    && e.contains(&format!("{mode:04o}"))
                    && e.contains("chmod 600"),
                "{e}"
            );
            assert!(!e.contains("s3cret"), "{e}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(Pin::from_file(&path).is_ok(), "mode {mode:o}");
        }
    }

    #[test]
    fn a_pin_file_must_be_a_short_regular_file_with_a_pin() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let e = Pin::from_file(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = Pin::from_file(&dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot open the PIN file"), "{e}");
        let path = dir.path().join("pin");
        for (text, why) in [
            ("\n".to_owned(), "is empty"),
            ("7".repeat(5000), "longer than 4096 bytes"),
        ] {
            std::fs::write(&path, &text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let e = Pin::from_file(&path).unwrap_err().to_string();
            assert!(e.contains(why) && !e.contains("7777777"), "{e}");
        }
    }

    #[test]
    fn pin_debug_is_redacted() {
        let p = Pin::new("s3cret-pin");
        assert!(!format!("{p:?}").contains("s3cret"));
        let c = Pkcs11Config {
            module: "/m.so".into(),
            token: TokenSelector::Label("t".into()),
            pin: p,
            key_label: "k".into(),
        };
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
