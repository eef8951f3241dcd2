//! The five steps in order, with a report of each.

use aws_nitro_enclaves_nsm_api::api::AttestationDoc;

use crate::chain::{parse_document_certs, verify_path, Cert, CertCache};
use crate::document;
use crate::error::{Code, Error};
use crate::policy::{check_freshness, check_policy, Policy, VerifyAt};
use crate::report::{Report, Step, StepName, StepStatus, TrustRoot};
use crate::signature::{sig_structure, verify_es384};

/// A document that passed every step. Only [`Verifier::verify`] makes one, so holding a `Verified` is
/// proof that verification happened.
#[derive(Debug, Clone)]
pub struct Verified {
    doc: AttestationDoc,
    sha256: [u8; 32],
    root: TrustRoot,
}

impl Verified {
    /// The decoded document.
    pub fn doc(&self) -> &AttestationDoc {
        &self.doc
    }

    /// The pinned root the document chained to.
    pub fn root(&self) -> &TrustRoot {
        &self.root
    }

    /// SHA-256 of the document bytes as received: what a request binds to.
    pub fn document_sha256(&self) -> &[u8; 32] {
        &self.sha256
    }
}

/// Verifies attestation documents against a fixed set of pinned roots.
///
/// Holds a [`CertCache`] of certificate links it has verified, so it is worth keeping one per process.
#[derive(Debug)]
pub struct Verifier {
    roots: Vec<Vec<u8>>,
    cache: CertCache,
}

impl Verifier {
    /// A verifier trusting exactly `roots` (DER). Each must parse as a P-256 or P-384 certificate.
    pub fn new(roots: Vec<Vec<u8>>) -> Result<Verifier, Error> {
        if roots.is_empty() {
            return Err(Error::new(
                Code::ChainUntrusted,
                "no root certificate given",
            ));
        }
        for (i, root) in roots.iter().enumerate() {
            Cert::parse(root, &format!("root {i}"))?;
        }
        Ok(Verifier {
            roots,
            cache: CertCache::default(),
        })
    }

    /// Replaces the link cache (for example with [`CertCache::disabled`] to measure cold verification).
    pub fn with_cache(mut self, cache: CertCache) -> Verifier {
        self.cache = cache;
        self
    }

    /// The link cache.
    pub fn cache(&self) -> &CertCache {
        &self.cache
    }

    /// Verifies `bytes`, returning the decoded document only if every step passes.
    pub fn verify(&self, bytes: &[u8], policy: &Policy, at: VerifyAt) -> Result<Verified, Error> {
        let report = self.report(bytes, policy, at);
        match (report.error, report.document, report.root) {
            (None, Some(doc), Some(root)) => Ok(Verified {
                doc,
                sha256: sha256(bytes),
                root,
            }),
            (Some(e), _, _) => Err(e),
            (None, _, _) => Err(Error::new(Code::Malformed, "no document")),
        }
    }

    /// Verifies `bytes` and reports every step, whatever the outcome.
    pub fn report(&self, bytes: &[u8], policy: &Policy, at: VerifyAt) -> Report {
        let mut report = Report {
            document: None,
            chain: Vec::new(),
            root: None,
            steps: Vec::with_capacity(StepName::ALL.len()),
            error: None,
        };
        let outcome = self.run(bytes, policy, at, &mut report);
        let failed_at = report.steps.len();
        if let Err(e) = outcome {
            report.steps.push(Step {
                name: StepName::ALL[failed_at],
                status: StepStatus::Failed,
                detail: e.to_string(),
            });
            for name in &StepName::ALL[failed_at + 1..] {
                report.steps.push(Step {
                    name: *name,
                    status: StepStatus::Skipped,
                    detail: "not reached".into(),
                });
            }
            report.error = Some(e);
        }
        report
    }

    /// Runs the steps, pushing a passed [`Step`] for each; the first error stops it.
    fn run(
        &self,
        bytes: &[u8],
        policy: &Policy,
        at: VerifyAt,
        report: &mut Report,
    ) -> Result<(), Error> {
        let passed = |report: &mut Report, name, detail: String| {
            report.steps.push(Step {
                name,
                status: StepStatus::Passed,
                detail,
            })
        };

        // 1. Structure.
        let parsed = document::parse(bytes)?;
        report.document = Some(parsed.doc.clone());
        passed(
            report,
            StepName::Parse,
            format!(
                "{}COSE_Sign1, ES384, {} PCRs, {} CA certificates",
                if parsed.tagged { "tagged " } else { "" },
                parsed.doc.pcrs.len(),
                parsed.doc.cabundle.len()
            ),
        );

        // 2. Chain.
        let (bundle, leaf) = parse_document_certs(&parsed.doc.cabundle, &parsed.doc.certificate)?;
        report.chain = bundle
            .iter()
            .chain(std::iter::once(&leaf))
            .map(Cert::summary)
            .collect();
        let roots = self
            .roots
            .iter()
            .enumerate()
            .map(|(i, der)| Cert::parse(der, &format!("root {i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let at_ms = match at {
            VerifyAt::Instant(t) => t.as_millis(),
            VerifyAt::DocumentTime => parsed.doc.timestamp,
        };
        let path = verify_path(&roots, &bundle, &leaf, i128::from(at_ms), &self.cache)?;
        report.root = Some(TrustRoot {
            subject: roots[path.root_index].subject(),
            sha256: sha256(&self.roots[path.root_index]),
        });
        passed(
            report,
            StepName::Chain,
            format!(
                "{} links from pinned root `{}` to `{}` ({} from cache), all valid at {}",
                path.links,
                roots[path.root_index].subject(),
                leaf.subject(),
                path.cached_links,
                crate::chain::rfc3339_ms(i128::from(at_ms))
            ),
        );

        // 3. COSE signature, over the bytes as received.
        if !leaf.is_p384() {
            return Err(Error::new(
                Code::UnsupportedAlg,
                "leaf key is not P-384, which ES384 requires",
            ));
        }
        let message = sig_structure(parsed.protected, parsed.payload);
        if !verify_es384(leaf.public_key_point(), &message, parsed.signature) {
            return Err(Error::new(
                Code::BadSignature,
                "COSE signature does not verify under the leaf key",
            ));
        }
        passed(
            report,
            StepName::Signature,
            format!("ES384 by the leaf key ({})", crate::signature::BACKEND),
        );

        // 4. Freshness.
        let detail = check_freshness(&parsed.doc, at, policy)?;
        passed(report, StepName::Freshness, detail);

        // 5. Policy.
        let detail = check_policy(&parsed.doc, policy)?;
        passed(report, StepName::Policy, detail);
        Ok(())
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}
