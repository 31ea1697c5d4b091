//! The PKCS#11 backend in process against a fresh SoftHSM2 token: a session that another
//! session of the process logged out is noticed and logged in again, instead of the private
//! keys silently vanishing from the key list.
//!
//! One test function: SoftHSM2 reads `SOFTHSM2_CONF` once per process. SoftHSM2 is required
//! (`apt-get install softhsm2`); without it this test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_kms::plugin::backend::round_trip;
use coffer_kms::plugin::softhsm::{SoftHsmToken, SOFTHSM2_MODULE};
use coffer_kms::plugin::{Backend, Pin, Pkcs11Backend, Pkcs11Config, TokenSelector};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::SessionState;

const MODULE: &str = SOFTHSM2_MODULE;
const PIN: &str = "11223344";
const TOKEN: &str = "coffer-inproc";

#[test]
fn a_logged_out_session_logs_in_again_and_keys_stay_visible() {
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::init(dir.path(), TOKEN, PIN, "55667788").unwrap();
    std::env::set_var("SOFTHSM2_CONF", &token.conf);

    let backend = Pkcs11Backend::open(Pkcs11Config {
        module: MODULE.into(),
        token: TokenSelector::Label(TOKEN.to_owned()),
        pin: Pin::new(PIN),
        key_label: "kek".to_owned(),
    })
    .unwrap();
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
}
