//! Bounded, deterministic fuzz-style tests: mutated and random inputs for every parser
//! that sees untrusted bytes. They assert that nothing panics and that a mutated object
//! only ever verifies if its signed payload is byte-identical to the original.

use crate::allowed_signers::AllowedSigners;
use crate::error::{ObjectError, ObjectKind};
use crate::object::{Signed, committer_time, parse_tag, split_commit, split_tag};
use crate::policy::glob_match;
use crate::sshsig::{SshSig, dearmor};
use crate::testdata::{vector, vector_str};
use crate::time::parse_openssh_time;
use crate::verify::verify_object;

/// xorshift64*: deterministic, seedable, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
    fn byte(&mut self) -> u8 {
        // Bias towards bytes that matter to the parsers.
        const INTERESTING: &[u8] = b"\n \t,=\"!*?#-Z0\x00\xff";
        if self.below(3) == 0 {
            INTERESTING[self.below(INTERESTING.len())]
        } else {
            (self.next() & 0xff) as u8
        }
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = out.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.byte();
            }
            2 => {
                let i = rng.below(len + 1);
                out.insert(i, rng.byte());
            }
            3 if len > 0 => {
                let i = rng.below(len);
                out.remove(i);
            }
            4 => out.truncate(rng.below(len + 1)),
            5 if len > 0 => {
                // Duplicate a slice (e.g. a header line) somewhere else.
                let a = rng.below(len);
                let b = (a + rng.below(80)).min(len);
                let chunk = out[a..b].to_vec();
                let at = rng.below(out.len() + 1);
                out.splice(at..at, chunk);
            }
            _ => {
                // Swap LF and space: exercises continuation-line handling.
                if let Some(i) = (0..len).map(|_| rng.below(len)).find(|&i| out[i] == b'\n') {
                    out[i] = b' ';
                }
            }
        }
    }
    out
}

const CASES: usize = 3000;

/// `split_commit` or `split_tag`.
type Split = fn(&[u8]) -> Result<Signed, ObjectError>;

#[test]
fn objects_never_panic_and_never_verify_a_different_payload() {
    let trust = AllowedSigners::parse(&vector_str("allowed_signers")).unwrap();
    let commits = ["commit1.raw", "commit2.raw", "merge-forgejo.raw", "merge-mergetag.raw"];
    let tags = ["tag-v1.raw", "approval-tag-bob.raw"];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut verified = 0;
    for case in 0..CASES {
        let name = if case % 3 == 2 { tags[case % 2] } else { commits[case % 4] };
        let original = vector(name);
        let input = mutate(&mut rng, &original);
        let _ = committer_time(&input);
        let _ = parse_tag(&input);
        let (kind, split): (ObjectKind, Split) =
            if name.starts_with("tag") || name.starts_with("approval") {
                (ObjectKind::Tag, split_tag)
            } else {
                (ObjectKind::Commit, split_commit)
            };
        let _ = split(&input);
        if verify_object(kind, &input, &trust, 1_800_000_000).is_ok() {
            verified += 1;
            assert_eq!(
                split(&input).unwrap().payload,
                split(&original).unwrap().payload,
                "case {case}: a different {kind} payload verified"
            );
        }
    }
    // Some mutations hit only the signature's line wrapping or the message of an
    // unrelated header; most must fail. This guards against a verifier that accepts all.
    assert!(verified < CASES / 2, "{verified} of {CASES} mutated objects verified");
}

#[test]
fn signatures_never_panic() {
    let armors = ["commit1.sig", "tag-v1.sig", "commit1-sha256hash.sig", "neg-wrong-namespace.sig"];
    let blob = dearmor(&vector("commit1.sig")).unwrap();
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for case in 0..CASES {
        let armor = mutate(&mut rng, &vector(armors[case % armors.len()]));
        if let Ok(sig) = SshSig::from_armor(&armor) {
            let _ = sig.verify(b"payload");
        }
        let b = mutate(&mut rng, &blob);
        if let Ok(sig) = SshSig::from_blob(&b) {
            let _ = sig.signed_data(b"x");
            let _ = sig.verify(&vector("commit1.payload"));
        }
        let random: Vec<u8> = (0..rng.below(200)).map(|_| rng.byte()).collect();
        let _ = SshSig::from_blob(&random);
        let _ = SshSig::from_armor(&random);
    }
}

#[test]
fn allowed_signers_and_small_parsers_never_panic() {
    let files = [
        "allowed_signers",
        "allowed_signers.as_expired",
        "allowed_signers.as_window",
        "allowed_signers.as_wrongns",
        "allowed_signers.as_wildcard",
    ];
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for case in 0..CASES {
        let input = mutate(&mut rng, &vector(files[case % files.len()]));
        let text = String::from_utf8_lossy(&input);
        if let Ok(s) = AllowedSigners::parse(&text) {
            for e in s.entries() {
                let _ = e.matches_principal("alice@example.com");
                let _ = e.allows_namespace("git");
                let _ = e.validity_at(i64::MAX);
                let _ = e.validity_at(i64::MIN);
            }
        }
        let word: String =
            (0..rng.below(20)).map(|_| char::from(rng.byte() & 0x7f)).collect::<String>();
        let _ = parse_openssh_time(&word);
        let _ = glob_match(&word, "manifests/prod.yaml");
        let _ = glob_match("manifests/**", &word);
        let _ = crate::allowed_signers::match_pattern_list(&word, "*@example.com,!m*");
    }
}
