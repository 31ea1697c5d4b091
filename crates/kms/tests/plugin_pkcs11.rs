//! The PKCS#11 backend in process against a fresh SoftHSM2 token: a session that another
//! session of the process logged out is noticed and logged in again, instead of the private
//! keys silently vanishing from the key list; a PIN the token refuses is never sent again.
//!
//! One test function: SoftHSM2 reads `SOFTHSM2_CONF` once per process. SoftHSM2 is required
//! (`apt-get install softhsm2`); without it this test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_kms::plugin::backend::round_trip;
use coffer_kms::plugin::softhsm::{SoftHsmToken, SOFTHSM2_MODULE};
use coffer_kms::plugin::{Backend, Pin, Pkcs11Backend, Pkcs11Config, PluginError, TokenSelector};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::session::{SessionState, UserType};
use cryptoki::types::AuthPin;

const MODULE: &str = SOFTHSM2_MODULE;
const PIN: &str = "11223344";
const NEW_PIN: &str = "99887766";
const TOKEN: &str = "coffer-inproc";

/// The backend on the test token, as the plugin opens it.
fn open_backend() -> Pkcs11Backend {
    Pkcs11Backend::open(Pkcs11Config {
        module: MODULE.into(),
        token: TokenSelector::Label(TOKEN.to_owned()),
        pin: Pin::new(PIN),
        key_label: "kek".to_owned(),
    })
    .unwrap()
}

#[test]
fn a_logged_out_session_logs_in_again_and_a_refused_pin_is_never_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::init(dir.path(), TOKEN, PIN, "55667788").unwrap();
    std::env::set_var("SOFTHSM2_CONF", &token.conf);

    let backend = open_backend();
    assert!(!format!("{backend:?}").contains(PIN));
    // No key yet: a clear error naming the way out.
    let e = backend.refresh().unwrap_err().to_string();
    assert!(e.contains("coffer kms-plugin rotate"), "{e}");
    let key_id = backend.rotate().unwrap();
    assert_eq!(round_trip(&backend).unwrap(), key_id);

    // Log the whole application out from another session.
    let other = Pkcs11::new(MODULE).unwrap();
    let _ = other.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = other
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| other.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
        .unwrap();
    let session = other.open_ro_session(slot).unwrap();
    session.logout().unwrap();
    assert_eq!(
        session.get_session_info().unwrap().session_state(),
        SessionState::RoPublic
    );

    assert_eq!(backend.refresh().unwrap(), key_id);
    assert_eq!(round_trip(&backend).unwrap(), key_id);
    assert_eq!(backend.current_key_id().as_deref(), Some(key_id.as_str()));

    // The PIN changed behind the running plugin, and everyone logged out: its next login fails
    // once, and it never sends that PIN again (each wrong try counts toward locking the token).
    let admin = other.open_rw_session(slot).unwrap();
    let set_pin = |from: &str, to: &str| {
        // Login is per application: the plugin's session may have logged it in already.
        match admin.login(UserType::User, Some(&AuthPin::from(from))) {
            Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => panic!("{e}"),
        }
        admin
            .set_pin(&AuthPin::from(from), &AuthPin::from(to))
            .unwrap();
        admin.logout().unwrap();
    };
    set_pin(PIN, NEW_PIN);
    let e = backend.refresh().unwrap_err();
    assert!(matches!(e, PluginError::Config(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("CKR_PIN_INCORRECT") && e.contains("fix the PIN and restart the plugin"),
        "{e}"
    );
    assert!(!e.contains(PIN) && !e.contains(NEW_PIN), "{e}");
    // Proof that nothing is tried: with the old PIN back in the token, a login would succeed,
    // yet every call still fails, without asking the token.
    set_pin(NEW_PIN, PIN);
    assert_eq!(round_trip(&backend).unwrap_err().to_string(), e);
    assert_eq!(backend.refresh().unwrap_err().to_string(), e);
    // A restart (a new backend) logs in with it.
    drop(backend);
    let restarted = open_backend();
    assert_eq!(round_trip(&restarted).unwrap(), key_id);
}
