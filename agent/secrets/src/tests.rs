//! Secrets, specified: round trips through real SSH and age keys, refusals that name
//! recipients, header parsing that rejects what is not age, values that never print.

use super::*;

const HOST_KEY: &str = include_str!("../testdata/host_ed25519");
const HOST_PUB: &str = include_str!("../testdata/host_ed25519.pub");
const OTHER_PUB: &str = include_str!("../testdata/other_ed25519.pub");

fn host() -> Identities {
    let mut ids = Identities::none();
    ids.add("/etc/ssh/ssh_host_ed25519_key", HOST_KEY.as_bytes()).expect("host key");
    ids
}

fn seal(value: &str, to: &[&str]) -> String {
    let rs: Vec<Recipient> = to.iter().map(|r| Recipient::parse(r).expect("recipient")).collect();
    encrypt(value.as_bytes(), &rs).expect("encrypt")
}

#[test]
fn a_secret_for_the_host_key_opens_on_the_host_only() {
    let armored = seal("s3cret-pw", &[HOST_PUB, OTHER_PUB]);
    assert!(armored.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"), "{armored}");
    let ct = Ciphertext::parse(armored.as_bytes()).expect("parse");
    assert_eq!(ct.stanzas().len(), 2);
    assert_eq!(decrypt(&ct, &host()).expect("decrypt").expose(), "s3cret-pw");

    let only_other = Ciphertext::parse(seal("x", &[OTHER_PUB]).as_bytes()).expect("parse");
    let err = decrypt(&only_other, &host()).expect_err("not for this host").to_string();
    let other_tag = tag_of(&Recipient::parse(OTHER_PUB).expect("other")).expect("tag");
    let host_described = Recipient::parse(HOST_PUB).expect("host").describe();
    assert!(err.contains(&format!("ssh-ed25519 key with tag {other_tag}")), "{err}");
    assert!(err.contains(&host_described), "{err}");
    assert!(host_described.starts_with("ssh-ed25519 SHA256:"), "{host_described}");
}

#[test]
fn a_break_glass_age_key_opens_it_too() {
    let glass = age::x25519::Identity::generate();
    let glass_pub = glass.to_public().to_string();
    let ct = Ciphertext::parse(seal("pw", &[HOST_PUB, &glass_pub]).as_bytes()).expect("parse");
    let mut ids = Identities::none();
    let file = format!("# break-glass\n{}\n", glass.to_string().expose_secret());
    ids.add("break-glass.txt", file.as_bytes()).expect("age identity");
    assert_eq!(decrypt(&ct, &ids).expect("decrypt").expose(), "pw");
    assert!(ids.describe().contains(&glass_pub), "{}", ids.describe());
    assert!(ct.recipients().contains("X25519"), "{}", ct.recipients());
}

#[test]
fn binary_and_armored_files_read_the_same() {
    let armored = seal("v", &[HOST_PUB]);
    let mut binary = Vec::new();
    age::armor::ArmoredReader::new(armored.as_bytes()).read_to_end(&mut binary).expect("dearmor");
    let a = Ciphertext::parse(armored.as_bytes()).expect("armored");
    let b = Ciphertext::parse(&binary).expect("binary");
    assert_eq!(a.stanzas(), b.stanzas());
    assert_ne!(a.sha256(), b.sha256(), "the digest is of the file as committed");
    assert_eq!(decrypt(&b, &host()).expect("binary decrypts").expose(), "v");
}

#[test]
fn re_encrypting_the_same_value_changes_the_digest() {
    let one = Ciphertext::parse(seal("same", &[HOST_PUB]).as_bytes()).expect("one");
    let two = Ciphertext::parse(seal("same", &[HOST_PUB]).as_bytes()).expect("two");
    assert_ne!(one.sha256(), two.sha256());
    assert_eq!(one.sha256().len(), 64);
}

#[test]
fn what_is_not_an_age_file_is_refused_with_the_reason() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "no header end"),
        (b"hunter2\n", "no header end"),
        (b"age-encryption.org/v2\n-> X25519 abc\nAAAA\n--- mac\n", "first line"),
        (b"age-encryption.org/v1\n--- mac\n", "no recipient stanza"),
        (b"age-encryption.org/v1\n-> ssh-ed25519\nAAAA\n--- mac\n", "key tag"),
        (b"age-encryption.org/v1\n-> ssh-ed25519 !!!! x\nAAAA\n--- mac\n", "key tag"),
        (b"age-encryption.org/v1\n-> X25519 abc\nnot base64!\n--- mac\n", "base64"),
        (b"age-encryption.org/v1\nstray\n-> X25519 abc\n--- mac\n", "between"),
        (b"-----BEGIN AGE ENCRYPTED FILE-----\n%%%%\n-----END AGE ENCRYPTED FILE-----\n", "armor"),
    ];
    for (input, expect) in cases {
        let err = Ciphertext::parse(input).expect_err("malformed").to_string();
        assert!(err.contains(expect), "{:?}: {err}", String::from_utf8_lossy(input));
    }
    let big = vec![b'a'; MAX_CIPHERTEXT_BYTES + 1];
    assert!(matches!(Ciphertext::parse(&big), Err(SecretError::TooLarge { .. })));
}

#[test]
fn a_value_never_prints() {
    let ct = Ciphertext::parse(seal("p@ss-w0rd", &[HOST_PUB]).as_bytes()).expect("parse");
    let value = decrypt(&ct, &host()).expect("decrypt");
    for shown in [format!("{value:?}"), format!("{ct:?}"), format!("{:?}", host())] {
        assert!(!shown.contains("p@ss-w0rd"), "{shown}");
    }
    assert_eq!(format!("{value:?}"), "SecretValue([redacted])");
}

#[test]
fn key_files_that_cannot_decrypt_are_refused_with_their_name() {
    let cases: &[(&str, &str)] = &[
        ("", "no key"),
        ("ssh-ed25519 AAAA", "neither"),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n-----END OPENSSH PRIVATE KEY-----\n",
            "OpenSSH",
        ),
    ];
    for (text, expect) in cases {
        let err = Identities::none().add("/k", text.as_bytes()).expect_err("bad key").to_string();
        assert!(err.starts_with("identity `/k`") && err.contains(expect), "{text:?}: {err}");
    }
    assert!(
        decrypt(
            &Ciphertext::parse(seal("x", &[HOST_PUB]).as_bytes()).expect("parse"),
            &Identities::none()
        )
        .expect_err("no key")
        .to_string()
        .contains("this host has no key")
    );
}

#[test]
fn recipients_parse_from_public_key_lines_with_comments() {
    assert!(Recipient::parse(HOST_PUB).is_ok());
    for bad in ["", "ssh-ed25519", "age1nope", "ssh-dss AAAAB3NzaC1kc3M="] {
        let err = Recipient::parse(bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("recipient `"), "{bad:?}: {err}");
    }
    // A private key given where a public one belongs is refused without being echoed.
    let age_identity =
        "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ";
    let ssh_private = include_str!("../testdata/host_ed25519");
    for private in [age_identity, ssh_private] {
        let err = Recipient::parse(private).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("this is a private key"), "{err}");
        let body = private.lines().find(|l| !l.starts_with("-----")).unwrap_or(private);
        assert!(!err.contains(&body[..20]), "the key is echoed: {err}");
    }
}
