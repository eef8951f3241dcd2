//! A strict reader for the one shape AWS KMS returns as `CiphertextForRecipient`: CMS EnvelopedData in
//! BER (indefinite lengths allowed), exactly one KeyTransRecipientInfo v2 identified by the SHA-256 of
//! the recipient's SubjectPublicKeyInfo, RSAES-OAEP with SHA-256 and MGF1-SHA-256, AES-256-CBC content,
//! the ciphertext possibly split over several OCTET STRINGs. Every field is checked; anything else is
//! a specific error. (`cms` 0.2 cannot read BER; a small strict reader for one fixed shape is less code
//! to trust than a general BER/CMS stack.)

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmsError {
    #[error("truncated BER at byte {0}")]
    Truncated(usize),
    #[error("{0} trailing bytes after the envelope")]
    TrailingBytes(usize),
    #[error("malformed BER at byte {at}: {what}")]
    Malformed { at: usize, what: &'static str },
    #[error("content type is not envelopedData")]
    NotEnvelopedData,
    #[error("EnvelopedData version {0} is not 2")]
    Version(u64),
    #[error("{0} recipients; exactly one KeyTransRecipientInfo is expected")]
    RecipientCount(usize),
    #[error("KeyTransRecipientInfo version {0} is not 2")]
    RecipientVersion(u64),
    #[error("the recipient is not identified by a subjectKeyIdentifier")]
    RidNotSubjectKeyIdentifier,
    #[error("the recipient's subjectKeyIdentifier is not the SHA-256 of our public key")]
    RidMismatch,
    #[error("key encryption algorithm is not RSAES-OAEP")]
    KeyAlgorithm,
    #[error("OAEP hash is not SHA-256")]
    OaepHash,
    #[error("OAEP mask generation is not MGF1 with SHA-256")]
    OaepMgf,
    #[error("OAEP label (pSourceFunc) is not the default empty label")]
    OaepLabel,
    #[error("encrypted key is {0} bytes; RSA-2048 gives 256")]
    EncryptedKeyLength(usize),
    #[error("encrypted content type is not data")]
    ContentType,
    #[error("content encryption is not AES-256-CBC")]
    ContentAlgorithm,
    #[error("AES-CBC IV is {0} bytes, not 16")]
    IvLength(usize),
    #[error("no encrypted content")]
    NoContent,
}

pub(crate) const OID_ENVELOPED_DATA: &[u8] =
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
pub(crate) const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
pub(crate) const OID_RSAES_OAEP: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07];
pub(crate) const OID_MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
pub(crate) const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
pub(crate) const OID_AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];

/// What the envelope holds, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The RSA-OAEP-wrapped content-encryption key.
    pub encrypted_key: Vec<u8>,
    pub iv: [u8; 16],
    /// AES-256-CBC ciphertext, segments joined.
    pub ciphertext: Vec<u8>,
}

/// One BER element.
#[derive(Debug, Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    /// Contents for definite lengths; for indefinite, the bytes up to the end-of-contents.
    body: &'a [u8],
    at: usize,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Reader<'a> {
        Reader { buf, pos: 0, base }
    }

    fn at(&self) -> usize {
        self.base + self.pos
    }

    fn done(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn byte(&mut self) -> Result<u8, CmsError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(CmsError::Truncated(self.at()))?;
        self.pos += 1;
        Ok(b)
    }

    /// The next element; indefinite lengths are resolved by walking nested elements to the end marker.
    fn next(&mut self) -> Result<Tlv<'a>, CmsError> {
        let at = self.at();
        let tag = self.byte()?;
        if tag & 0x1f == 0x1f {
            return Err(CmsError::Malformed {
                at,
                what: "high tag numbers are not used here",
            });
        }
        let first = self.byte()?;
        let start;
        let body;
        if first == 0x80 {
            if tag & 0x20 == 0 {
                return Err(CmsError::Malformed {
                    at,
                    what: "indefinite length on a primitive element",
                });
            }
            start = self.pos;
            loop {
                if self.buf.get(self.pos..self.pos + 2) == Some(&[0, 0]) {
                    body = &self.buf[start..self.pos];
                    self.pos += 2;
                    break;
                }
                if self.pos >= self.buf.len() {
                    return Err(CmsError::Truncated(self.at()));
                }
                self.next()?;
            }
        } else {
            let len = if first < 0x80 {
                first as usize
            } else {
                let n = (first & 0x7f) as usize;
                if n > 4 {
                    return Err(CmsError::Malformed {
                        at,
                        what: "length of more than 4 bytes",
                    });
                }
                let mut len = 0usize;
                for _ in 0..n {
                    len = (len << 8) | self.byte()? as usize;
                }
                len
            };
            start = self.pos;
            let end = start
                .checked_add(len)
                .filter(|&e| e <= self.buf.len())
                .ok_or(CmsError::Truncated(self.base + self.buf.len()))?;
            body = &self.buf[start..end];
            self.pos = end;
        }
        Ok(Tlv {
            tag,
            body,
            at: self.base + start,
        })
    }

    fn expect(&mut self, tag: u8, what: &'static str) -> Result<Tlv<'a>, CmsError> {
        let t = self.next()?;
        if t.tag != tag {
            return Err(CmsError::Malformed { at: t.at, what });
        }
        Ok(t)
    }
}

fn inner(t: Tlv<'_>) -> Reader<'_> {
    Reader::new(t.body, t.at)
}

fn small_int(t: Tlv<'_>) -> Result<u64, CmsError> {
    if t.tag != 0x02 || t.body.is_empty() || t.body.len() > 8 {
        return Err(CmsError::Malformed {
            at: t.at,
            what: "expected a small INTEGER",
        });
    }
    Ok(t.body.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
}

/// `AlgorithmIdentifier` with `oid` and absent or NULL parameters.
fn simple_alg(r: &mut Reader<'_>, oid: &[u8], err: CmsError) -> Result<(), CmsError> {
    let seq = r.expect(0x30, "expected an AlgorithmIdentifier")?;
    let mut a = inner(seq);
    if a.expect(0x06, "expected an OID")?.body != oid {
        return Err(err);
    }
    if !a.done() {
        let p = a.next()?;
        if p.tag != 0x05 || !p.body.is_empty() || !a.done() {
            return Err(err);
        }
    }
    Ok(())
}

/// Parses and checks an envelope addressed to the key whose SPKI hashes to `our_ski`.
pub fn parse(ber: &[u8], our_ski: &[u8; 32]) -> Result<Envelope, CmsError> {
    let mut top = Reader::new(ber, 0);
    let content_info = top.expect(0x30, "ContentInfo is not a SEQUENCE")?;
    if !top.done() {
        return Err(CmsError::TrailingBytes(ber.len() - top.pos));
    }
    let mut ci = inner(content_info);
    if ci.expect(0x06, "expected the content type OID")?.body != OID_ENVELOPED_DATA {
        return Err(CmsError::NotEnvelopedData);
    }
    let explicit = ci.expect(0xa0, "expected [0] content")?;
    let mut ex = inner(explicit);
    let enveloped = ex.expect(0x30, "EnvelopedData is not a SEQUENCE")?;
    if !ex.done() || !ci.done() {
        return Err(CmsError::Malformed {
            at: explicit.at,
            what: "extra elements around EnvelopedData",
        });
    }
    let mut ed = inner(enveloped);
    let version = small_int(ed.next()?)?;
    if version != 2 {
        return Err(CmsError::Version(version));
    }
    let mut next = ed.next()?;
    if next.tag == 0xa0 {
        return Err(CmsError::Malformed {
            at: next.at,
            what: "originatorInfo is not expected",
        });
    }
    if next.tag != 0x31 {
        return Err(CmsError::Malformed {
            at: next.at,
            what: "expected the recipientInfos SET",
        });
    }
    let mut recipients = Vec::new();
    let mut set = inner(next);
    while !set.done() {
        recipients.push(set.next()?);
    }
    if recipients.len() != 1 {
        return Err(CmsError::RecipientCount(recipients.len()));
    }
    let ktri = recipients[0];
    if ktri.tag != 0x30 {
        return Err(CmsError::Malformed {
            at: ktri.at,
            what: "recipient is not a KeyTransRecipientInfo",
        });
    }
    let mut k = inner(ktri);
    let rv = small_int(k.next()?)?;
    if rv != 2 {
        return Err(CmsError::RecipientVersion(rv));
    }
    let rid = k.next()?;
    if rid.tag != 0x80 {
        return Err(CmsError::RidNotSubjectKeyIdentifier);
    }
    if rid.body != our_ski {
        return Err(CmsError::RidMismatch);
    }
    let alg = k.expect(0x30, "expected keyEncryptionAlgorithm")?;
    let mut a = inner(alg);
    if a.expect(0x06, "expected an OID")?.body != OID_RSAES_OAEP {
        return Err(CmsError::KeyAlgorithm);
    }
    // RSAES-OAEP-params: [0] hashAlgorithm, [1] maskGenAlgorithm, [2] pSourceAlgorithm; defaults (SHA-1)
    // are not accepted: SHA-256 must be explicit.
    let params = a.expect(0x30, "expected RSAES-OAEP-params")?;
    let mut p = inner(params);
    let mut hash_ok = false;
    let mut mgf_ok = false;
    while !p.done() {
        let field = p.next()?;
        let mut f = inner(field);
        match field.tag {
            0xa0 => {
                simple_alg(&mut f, OID_SHA256, CmsError::OaepHash)?;
                hash_ok = true;
            }
            0xa1 => {
                let seq = f.expect(0x30, "expected the MGF AlgorithmIdentifier")?;
                let mut m = inner(seq);
                if m.expect(0x06, "expected an OID")?.body != OID_MGF1 {
                    return Err(CmsError::OaepMgf);
                }
                simple_alg(&mut m, OID_SHA256, CmsError::OaepMgf)?;
                if !m.done() {
                    return Err(CmsError::OaepMgf);
                }
                mgf_ok = true;
            }
            0xa2 => return Err(CmsError::OaepLabel),
            _ => {
                return Err(CmsError::Malformed {
                    at: field.at,
                    what: "unknown RSAES-OAEP parameter",
                })
            }
        }
    }
    if !hash_ok {
        return Err(CmsError::OaepHash);
    }
    if !mgf_ok {
        return Err(CmsError::OaepMgf);
    }
    let encrypted_key = k.expect(0x04, "expected encryptedKey")?;
    if encrypted_key.body.len() != 256 {
        return Err(CmsError::EncryptedKeyLength(encrypted_key.body.len()));
    }
    if !k.done() {
        return Err(CmsError::Malformed {
            at: ktri.at,
            what: "extra fields in KeyTransRecipientInfo",
        });
    }

    next = ed.expect(0x30, "expected EncryptedContentInfo")?;
    let mut eci = inner(next);
    if eci.expect(0x06, "expected the content type OID")?.body != OID_DATA {
        return Err(CmsError::ContentType);
    }
    let calg = eci.expect(0x30, "expected contentEncryptionAlgorithm")?;
    let mut c = inner(calg);
    if c.expect(0x06, "expected an OID")?.body != OID_AES256_CBC {
        return Err(CmsError::ContentAlgorithm);
    }
    let iv = c.expect(0x04, "expected the IV")?;
    let iv: [u8; 16] = iv
        .body
        .try_into()
        .map_err(|_| CmsError::IvLength(iv.body.len()))?;
    if !c.done() {
        return Err(CmsError::ContentAlgorithm);
    }
    let content = match eci.next() {
        Ok(t) => t,
        Err(_) if eci.done() => return Err(CmsError::NoContent),
        Err(e) => return Err(e),
    };
    let ciphertext = match content.tag {
        0x80 => content.body.to_vec(),
        0xa0 => {
            let mut segs = inner(content);
            let mut out = Vec::new();
            while !segs.done() {
                out.extend_from_slice(
                    segs.expect(0x04, "content segment is not an OCTET STRING")?
                        .body,
                );
            }
            out
        }
        _ => {
            return Err(CmsError::Malformed {
                at: content.at,
                what: "expected [0] encryptedContent",
            })
        }
    };
    if ciphertext.is_empty() {
        return Err(CmsError::NoContent);
    }
    if !eci.done() || !ed.done() {
        return Err(CmsError::Malformed {
            at: next.at,
            what: "unprotectedAttrs or extra fields are not expected",
        });
    }
    Ok(Envelope {
        encrypted_key: encrypted_key.body.to_vec(),
        iv,
        ciphertext,
    })
}
