//! `/dev/nsm` through `aws-nitro-enclaves-nsm-api`.

use aws_nitro_enclaves_nsm_api::api::{Request, Response};
use serde_bytes::ByteBuf;

use crate::{Nsm, NsmError};

/// `/dev/nsm` through `aws-nitro-enclaves-nsm-api`.
#[derive(Debug)]
pub struct DeviceNsm {
    fd: i32,
}

impl DeviceNsm {
    pub fn open() -> Result<DeviceNsm, NsmError> {
        let fd = aws_nitro_enclaves_nsm_api::driver::nsm_init();
        if fd < 0 {
            return Err(NsmError::NoDevice);
        }
        Ok(DeviceNsm { fd })
    }
}

impl Drop for DeviceNsm {
    fn drop(&mut self) {
        aws_nitro_enclaves_nsm_api::driver::nsm_exit(self.fd);
    }
}

/// The request the device is sent (separate so it can be unit-tested without a device).
pub fn attestation_request(
    user_data: &[u8],
    nonce: Option<&[u8]>,
    public_key: Option<&[u8]>,
) -> Request {
    Request::Attestation {
        user_data: Some(ByteBuf::from(user_data.to_vec())),
        nonce: nonce.map(|n| ByteBuf::from(n.to_vec())),
        public_key: public_key.map(|k| ByteBuf::from(k.to_vec())),
    }
}

/// The document in a device response, or why there is none.
pub fn document_from_response(response: Response) -> Result<Vec<u8>, NsmError> {
    match response {
        Response::Attestation { document } => Ok(document),
        Response::Error(code) => Err(NsmError::Refused(format!("{code:?}"))),
        other => Err(NsmError::Refused(format!("unexpected response {other:?}"))),
    }
}

impl Nsm for DeviceNsm {
    fn attest(
        &self,
        user_data: &[u8],
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        let request = attestation_request(user_data, nonce, public_key);
        document_from_response(aws_nitro_enclaves_nsm_api::driver::nsm_process_request(
            self.fd, request,
        ))
    }

    fn kind(&self) -> &'static str {
        "device"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_nitro_enclaves_nsm_api::api::ErrorCode;

    #[test]
    fn device_requests_and_responses_map_to_the_crate_types() {
        match attestation_request(b"ud", Some(b"nonce"), None) {
            Request::Attestation {
                user_data,
                nonce,
                public_key,
            } => {
                assert_eq!(user_data.unwrap().as_slice(), b"ud");
                assert_eq!(nonce.unwrap().as_slice(), b"nonce");
                assert!(public_key.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            document_from_response(Response::Attestation {
                document: vec![1, 2]
            })
            .unwrap(),
            vec![1, 2]
        );
        assert!(matches!(
            document_from_response(Response::Error(ErrorCode::InvalidArgument)),
            Err(NsmError::Refused(_))
        ));
        assert!(matches!(
            document_from_response(Response::GetRandom { random: vec![] }),
            Err(NsmError::Refused(_))
        ));
    }

    #[test]
    fn without_dev_nsm_the_device_is_reported_missing_not_a_panic() {
        if !std::path::Path::new("/dev/nsm").exists() {
            assert!(matches!(DeviceNsm::open(), Err(NsmError::NoDevice)));
        }
    }
}
