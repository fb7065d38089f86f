use std::collections::HashMap;

use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cellmesh-config-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn defaults_without_file_env_or_flags() {
    let c = NodeConfig::resolve(&NodeFlags::default(), env(&[])).expect("defaults");
    assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert_eq!(
        c.key_file,
        PathBuf::from(DEFAULT_DATA_DIR).join(KEY_FILE_NAME)
    );
    assert_eq!(c.control.listen, DEFAULT_CONTROL_LISTEN.parse().unwrap());
    assert_eq!(c.drain_deadline, DEFAULT_DRAIN_DEADLINE);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.psk, None);
}

#[test]
fn flags_beat_environment_beat_file() {
    let dir = scratch("precedence");
    let file = dir.join("node.toml");
    std::fs::write(
        &file,
        r#"
listen = "127.0.0.1:1000"
seeds = ["127.0.0.1:2000"]
tags = ["gpu"]
data_dir = "/tmp/from-file"
psk_file = "/tmp/psk"
[control]
listen = "127.0.0.1:3000"
[log]
format = "json"
[drain]
deadline = "90s"
"#,
    )
    .unwrap();
    let flags = NodeFlags {
        config: Some(file.clone()),
        listen: Some("127.0.0.1:1002".parse().unwrap()),
        ..NodeFlags::default()
    };
    let c = NodeConfig::resolve(
        &flags,
        env(&[
            ("CELLMESH_LISTEN", "127.0.0.1:1001"),
            ("CELLMESH_CONTROL_LISTEN", "127.0.0.1:3001"),
        ]),
    )
    .expect("valid");
    assert_eq!(c.listen, "127.0.0.1:1002".parse().unwrap(), "flag wins");
    assert_eq!(
        c.control.listen,
        "127.0.0.1:3001".parse().unwrap(),
        "env beats file"
    );
    assert_eq!(c.seeds, vec!["127.0.0.1:2000".parse().unwrap()]);
    assert_eq!(c.tags, vec!["gpu".to_owned()]);
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.drain_deadline, Duration::from_secs(90));
    assert_eq!(c.key_file, PathBuf::from("/tmp/from-file/node.key"));
    assert_eq!(c.psk, Some(PskSource::File("/tmp/psk".into())));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unknown_key_names_the_key_and_the_file() {
    let dir = scratch("unknown");
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\n[control]\nlisten_on = \"x\"\n",
    )
    .unwrap();
    let flags = NodeFlags {
        config: Some(file.clone()),
        ..NodeFlags::default()
    };
    let e = NodeConfig::resolve(&flags, env(&[])).expect_err("unknown key");
    let msg = e.to_string();
    assert!(msg.contains("listen_on"), "{msg}");
    assert!(msg.contains("bad.toml"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_value_names_the_key_and_its_source() {
    let dir = scratch("badvalue");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[drain]\ndeadline = \"soon\"\n").unwrap();
    let flags = NodeFlags {
        config: Some(file.clone()),
        ..NodeFlags::default()
    };
    let msg = NodeConfig::resolve(&flags, env(&[]))
        .expect_err("bad value")
        .to_string();
    assert!(
        msg.contains("drain.deadline") && msg.contains("bad.toml"),
        "{msg}"
    );
    let msg = NodeConfig::resolve(
        &NodeFlags::default(),
        env(&[("CELLMESH_LISTEN", "nowhere")]),
    )
    .expect_err("bad env")
    .to_string();
    assert!(
        msg.contains("CELLMESH_LISTEN") && msg.contains("`listen`"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn psk_must_be_64_hex_digits_and_is_never_echoed() {
    assert!(parse_psk(&format!(" {}\n", "ab".repeat(32))).is_ok());
    assert!(parse_psk("abc").is_err());
    let e = parse_psk(&"zz".repeat(32)).expect_err("not hex");
    assert!(e.contains("non-hex") && !e.contains("zz"), "{e}");
}
