use super::*;

fn sim(password: Option<&str>) -> Shared {
    let config = SimConfig {
        load_w: 100.0,
        password: password.map(str::to_owned),
        ..SimConfig::default()
    };
    Shared::new(
        config,
        SocketAddr::from(([127, 0, 0, 1], 0x1234)),
        Arc::new(Knobs::default()),
    )
}

#[test]
fn identity_follows_the_port_and_model() {
    let s = sim(None);
    assert_eq!(s.mac, "02E24D001234");
    assert_eq!(s.id, "shellyplusplugs-02e24d001234");
    let info = s.device_info();
    assert_eq!(info["gen"], 2);
    assert_eq!(info["model"], "SNPL-00112EU");
    assert_eq!(info["auth_en"], false);
    assert_eq!(info["auth_domain"], Value::Null);
    assert_eq!(
        sim(Some("pw")).device_info()["auth_domain"],
        "shellyplusplugs-02e24d001234"
    );
}

#[test]
fn noise_is_deterministic_and_bounded() {
    let a: Vec<f64> = (0..100).map(|n| noise(7, n)).collect();
    let b: Vec<f64> = (0..100).map(|n| noise(7, n)).collect();
    assert_eq!(a, b);
    assert!(a.iter().all(|x| (-1.0..=1.0).contains(x)));
    assert_ne!(noise(7, 1), noise(8, 1));
}

#[test]
fn switching_and_protection() {
    let s = sim(None);
    assert!(s.switch(false, "http"));
    assert_eq!(s.switch_status()["output"], false);
    assert_eq!(s.switch_status()["apower"], 0.0);
    assert!(!s.switch(true, "http"));
    assert_eq!(s.switch_status()["apower"], 100.0);
    // Overheating opens the relay and keeps it open.
    s.set_overheated(true);
    assert!(!s.switch(true, "http"));
    let st = s.switch_status();
    assert_eq!(
        (st["output"].clone(), st["errors"].clone()),
        (json!(false), json!(["overtemp"]))
    );
    s.set_overheated(false);
    s.switch(true, "http");
    // Overpower trips at once, and again at the next switch-on.
    let s = Arc::new(sim(None));
    ShellyHandle(s.clone()).set_load_w(3000.0);
    let st = s.switch_status();
    assert_eq!(
        (st["output"].clone(), st["errors"].clone()),
        (json!(false), json!(["overpower"]))
    );
    s.switch(true, "http");
    assert_eq!(s.switch_status()["errors"], json!(["overpower"]));
    ShellyHandle(s.clone()).set_load_w(2000.0);
    s.switch(true, "http");
    assert_eq!(s.switch_status()["output"], true);
    assert_eq!(s.switch_status().get("errors"), None);
}

#[test]
fn rpc_arguments_are_checked() {
    let s = sim(None);
    let err = |m: &str, p: Value| s.call(m, &p, "http").map(|_| ()).map_err(|e| e.code);
    assert_eq!(err("Switch.Set", json!({"id": 0})), Err(-103));
    assert_eq!(err("Switch.Set", json!({"id": 1, "on": true})), Err(-105));
    assert_eq!(err("Switch.Set", json!({"id": 0, "on": "yes"})), Err(-103));
    assert_eq!(err("Switch.GetStatus", json!({})), Err(-103));
    assert_eq!(err("Nope.Nope", json!({})), Err(404));
    assert_eq!(err("Switch.Set", json!({"id": 0, "on": false})), Ok(()));
    assert_eq!(
        query_params(Some("id=0&on=true&name=%22x%22&raw=abc")),
        json!({"id": 0, "on": true, "name": "x", "raw": "abc"})
    );
}

#[test]
fn http_nonces_need_a_growing_count_and_expire() {
    let s = sim(Some("pw"));
    let n = s.issue_nonce().to_string();
    assert_eq!(s.check_nonce(&n, Some(1)), NonceCheck::Good);
    assert_eq!(s.check_nonce(&n, Some(1)), NonceCheck::Unknown, "replayed");
    assert_eq!(s.check_nonce(&n, Some(2)), NonceCheck::Good);
    assert_eq!(s.check_nonce("123", Some(1)), NonceCheck::Unknown);
    s.knobs.single_use_nonces.store(true, Ordering::Relaxed);
    let n = s.issue_nonce().to_string();
    assert_eq!(s.check_nonce(&n, Some(1)), NonceCheck::Good);
    assert_eq!(s.check_nonce(&n, Some(2)), NonceCheck::Unknown);
    s.knobs.nonce_ttl_ms.store(0, Ordering::Relaxed);
    let n = s.issue_nonce().to_string();
    std::thread::sleep(Duration::from_millis(2));
    assert_eq!(s.check_nonce(&n, None), NonceCheck::Stale);
}

#[test]
fn frames_are_answered_and_challenged() {
    let s = sim(Some("secret"));
    let open = s
        .frame(
            &json!({"id": 1, "src": "me", "method": "Shelly.GetDeviceInfo"}),
            Some("me"),
            "WS_in",
            false,
        )
        .expect("answer");
    assert_eq!(open["result"]["auth_en"], true);
    assert_eq!(open["dst"], "me");
    let refused = s
        .frame(
            &json!({"id": 2, "src": "me", "method": "Shelly.GetStatus"}),
            Some("me"),
            "WS_in",
            false,
        )
        .expect("answer");
    assert_eq!(refused["error"]["code"], 401);
    let challenge: Value =
        serde_json::from_str(refused["error"]["message"].as_str().expect("text"))
            .expect("challenge JSON");
    assert_eq!(challenge["auth_type"], "digest");
    assert_eq!(challenge["realm"], s.id.as_str());
    let nonce = challenge["nonce"]
        .as_u64()
        .expect("numeric nonce")
        .to_string();
    let auth = digest::rpc_auth(&s.id, &nonce, "secret", 1, "c1");
    let ok = s
        .frame(
            &json!({"id": 3, "src": "me", "method": "Shelly.GetStatus", "auth": auth}),
            Some("me"),
            "WS_in",
            false,
        )
        .expect("answer");
    assert_eq!(ok["result"]["switch:0"]["output"], true);
    let wrong = digest::rpc_auth(&s.id, &nonce, "guess", 2, "c2");
    let no = s
        .frame(
            &json!({"id": 4, "src": "me", "method": "Shelly.GetStatus", "auth": wrong}),
            Some("me"),
            "WS_in",
            false,
        )
        .expect("answer");
    assert_eq!(no["error"]["code"], 401);
    // A notification (no id) gets no answer.
    assert_eq!(
        s.frame(&json!({"src": "me", "method": "X"}), None, "WS_in", false),
        None
    );
}
