//! Writes the seed corpora under `fuzz/corpus/` from the test vectors and from valid messages made
//! here (so the fuzzer starts past the first checks). Run once, commit the result:
//! `cargo run -p confidant-fuzz-targets --example seed-corpus`.

use std::path::{Path, PathBuf};

use confidant_protocol::frame::Frame;
use confidant_protocol::keyconfig::{encode_list, KeyPair};
use confidant_protocol::link::{self, Kind};
use confidant_protocol::message::Ask;
use confidant_protocol::request::{encapsulate, CONFIDANT_LABELS};
use confidant_protocol::user_data::{Limits, UserData};
use confidant_protocol::{Aead, Code, Kem, ReplayRng, Suite, UnixMillis};

fn write(root: &Path, target: &str, name: &str, data: &[u8]) {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    std::fs::write(dir.join(name), data).unwrap_or_else(|e| panic!("{name}: {e}"));
}

fn copy_dir(root: &Path, target: &str, from: &Path, ext: &str) {
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let path = entry.map(|e| e.path()).unwrap_or_default();
        if path.extension().and_then(|e| e.to_str()) == Some(ext) {
            let data = std::fs::read(&path).unwrap_or_default();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("seed");
            write(root, target, name, &data);
        }
    }
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root: PathBuf = repo.join("fuzz/corpus");
    let vectors = repo.join("test-vectors");
    for sub in ["real", "synthetic", "negative"] {
        copy_dir(
            &root,
            "attestation",
            &vectors.join("attestation").join(sub),
            "cose",
        );
    }

    let aeads = [Aead::Aes256Gcm, Aead::ChaCha20Poly1305, Aead::Aes128Gcm];
    let keys = [
        KeyPair::derive(0x10, Kem::XWing, &[7; 32], &aeads),
        KeyPair::derive(0x11, Kem::X25519HkdfSha256, &[8; 32], &aeads),
    ];
    let list = encode_list(&keys.iter().map(|k| k.config.clone()).collect::<Vec<_>>());
    write(&root, "key_configs", "two-keys", &list);
    write(
        &root,
        "key_configs",
        "one-key",
        &encode_list(&[keys[1].config.clone()]),
    );

    let mut requests = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let suite = Suite {
            kem: key.config.kem,
            aead: key.config.aeads[0],
        };
        let (req, client) = encapsulate(
            &key.config,
            suite,
            &[0; 32],
            &Ask::new("What is a copay?").to_bytes(),
            &CONFIDANT_LABELS,
            &mut ReplayRng::new(&[i as u8 + 1; 64]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        write(&root, "request", &format!("valid-{i}"), &req);
        requests.push((req, client));
    }
    // The session target's fixed session comes from this same request to key 0x11 (seed 3).
    let (_, client) = encapsulate(
        &keys[1].config,
        Suite {
            kem: keys[1].config.kem,
            aead: keys[1].config.aeads[0],
        },
        &[0; 32],
        b"{}",
        &CONFIDANT_LABELS,
        &mut ReplayRng::new(&[3; 64]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut session = client.into_session();
    for (i, text) in ["Next?", "And then?"].iter().enumerate() {
        if let (seq, Frame::Session { ciphertext, .. }) =
            session.seal_turn(&Ask::new(*text).to_bytes())
        {
            let mut body = seq.to_be_bytes().to_vec();
            body.extend_from_slice(&ciphertext);
            write(&root, "session", &format!("turn-{i}"), &body);
        }
    }

    let frames = [
        Frame::Attest { nonce: None },
        Frame::Attest {
            nonce: Some([7; 32]),
        },
        Frame::Attestation {
            document: vec![0x84, 0x44],
            key_configs: list.clone(),
        },
        Frame::Request {
            attestation_sha256: [1; 32],
            encapsulated: requests[1].0.clone(),
        },
        Frame::Session {
            id: [2; 16],
            seq: 3,
            ciphertext: vec![4; 40],
        },
        Frame::Response { nonce: vec![5; 32] },
        Frame::Chunk {
            last: true,
            sealed: vec![6; 30],
        },
        Frame::Error {
            code: Code::Busy,
            message: "retry".into(),
        },
        Frame::Health {
            status: "{}".into(),
        },
        Frame::Close {
            id: [8; 16],
            seq: 2,
            tag: vec![9; 16],
        },
    ];
    for (i, f) in frames.iter().enumerate() {
        write(&root, "frame", &format!("{i:02}-{}", f.name()), &f.encode());
    }

    let ud = UserData {
        kc: [1; 32],
        model: [2; 32],
        settings: Some([3; 32]),
        dtype: Some("bf16".into()),
        limits: Some(Limits {
            context_tokens: 2048,
            max_new_tokens: 512,
        }),
        exp: UnixMillis::from_secs(1_800_000_000),
        id: None,
        rk: None,
    };
    write(&root, "user_data", "full", &ud.encode());
    write(
        &root,
        "user_data",
        "minimal",
        &UserData {
            settings: None,
            dtype: None,
            limits: None,
            ..ud
        }
        .encode(),
    );

    write(&root, "ask", "plain", &Ask::new("hi").to_bytes());
    write(
        &root,
        "ask",
        "full",
        &Ask {
            max_tokens: Some(8),
            temperature: Some(0.7),
            top_p: Some(0.9),
            top_k: Some(40),
            seed: Some(1),
            session: true,
            ..Ask::new("What is covered?")
        }
        .to_bytes(),
    );

    let mut l = Vec::new();
    link::encode_control(1, Kind::Open, &mut l);
    link::encode_data(1, b"\x01\x00\x00\x00\x00", &mut l);
    link::encode_control(1, Kind::Fin, &mut l);
    link::encode_control(2, Kind::Reset, &mut l);
    write(&root, "link", "open-data-fin-reset", &l);

    let kms = vectors.join("kms/kms-ciphertext-for-recipient.ber");
    write(
        &root,
        "cms",
        "kms-fixture",
        &std::fs::read(&kms).unwrap_or_default(),
    );
    let envelope = confidant_sealing::envelope::build(
        confidant_sealing::RecipientKey::from_pkcs8(
            &std::fs::read(vectors.join("kms/recipient-key.pk8.der")).unwrap_or_default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .spki_der(),
        b"0123456789abcdef0123456789abcdef",
        64,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    write(&root, "cms", "built", &envelope);

    let settings =
        std::fs::read(repo.join("enclave/assets/demo-settings.json")).unwrap_or_default();
    write(&root, "sealed_settings", "settings-json", &settings);
    let sealed = confidant_sealing::sealed::SealedFile::seal(
        "arn:aws:kms:us-east-1:111122223333:key/demo",
        vec![1; 40],
        &[0; 32],
        &settings,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    write(&root, "sealed_settings", "sealed", &sealed.to_json());
    println!("seeded {}", root.display());
}
