//! The gRPC health check's one call (feature `tonic`): `grpc.health.v1.Health/Check`
//! over plain HTTP/2 to the endpoint's address, healthy when the answer is
//! `SERVING`.
//!
//! Written against tonic's codegen-free client (`tonic::client::Grpc`) with a
//! hand-made codec for the two messages (`HealthCheckRequest { string service = 1; }`,
//! `HealthCheckResponse { ServingStatus status = 1; }`), so the feature needs neither
//! `tonic-health` nor `prost`: two one-field messages do not warrant a protobuf
//! runtime and a derive macro in every user's build.

use std::net::SocketAddr;

use bytes::{Buf, BufMut};
use tonic::client::Grpc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Endpoint as TonicEndpoint;
use tonic::Status;

/// `grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// Calls `Check` for `service` ("" is the server as a whole) on `addr`: true when
/// the server answers `SERVING`; false on any other status, an error status
/// (`NOT_FOUND` for a service it does not know, `UNIMPLEMENTED` without the health
/// service) or a connection failure. The caller bounds the time.
pub(crate) async fn check(addr: SocketAddr, service: &str) -> bool {
    let Ok(endpoint) = TonicEndpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    // One connection per probe, closed when the channel drops: a probe also tests
    // that the endpoint accepts connections, as the TCP and HTTP checks do.
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    let mut client = Grpc::new(channel);
    if client.ready().await.is_err() {
        return false;
    }
    let path = PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    let request = tonic::Request::new(service.to_owned());
    match client.unary(request, path, HealthCodec).await {
        Ok(response) => response.into_inner() == SERVING,
        Err(_) => false,
    }
}

/// Encodes the request (the service name) and decodes the response (its status).
#[derive(Debug, Clone, Copy)]
struct HealthCodec;

impl Codec for HealthCodec {
    type Encode = String;
    type Decode = u64;
    type Encoder = HealthCodec;
    type Decoder = HealthCodec;

    fn encoder(&mut self) -> Self::Encoder {
        HealthCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        HealthCodec
    }
}

impl Encoder for HealthCodec {
    type Item = String;
    type Error = Status;

    fn encode(&mut self, service: String, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&encode_request(&service));
        Ok(())
    }
}

impl Decoder for HealthCodec {
    type Item = u64;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<u64>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        decode_status(&bytes)
            .map(Some)
            .ok_or_else(|| Status::internal("malformed HealthCheckResponse"))
    }
}

/// `HealthCheckRequest`: field 1, length-delimited; proto3 leaves an empty string out.
fn encode_request(service: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(service.len() + 11);
    if !service.is_empty() {
        out.push(0x0a);
        put_varint(&mut out, service.len() as u64);
        out.extend_from_slice(service.as_bytes());
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint at the front of `b`, advancing it; `None` if cut short or over
/// ten bytes.
fn take_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` of a `HealthCheckResponse` (0, `UNKNOWN`, when absent; the last one
/// wins, as protobuf says), skipping fields a newer server may add; `None` when the
/// bytes are not a well-formed message.
fn decode_status(mut b: &[u8]) -> Option<u64> {
    let mut status = 0;
    while !b.is_empty() {
        let tag = take_varint(&mut b)?;
        match (tag >> 3, tag & 7) {
            (0, _) => return None,
            (1, 0) => status = take_varint(&mut b)?,
            (_, 0) => {
                take_varint(&mut b)?;
            }
            (_, 1) => b = b.get(8..)?,
            (_, 2) => {
                let len = usize::try_from(take_varint(&mut b)?).ok()?;
                b = b.get(len..)?;
            }
            (_, 5) => b = b.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encoding() {
        assert_eq!(encode_request(""), b"");
        assert_eq!(encode_request("web"), b"\x0a\x03web");
        let long = "s".repeat(200);
        let enc = encode_request(&long);
        assert_eq!(&enc[..3], &[0x0a, 0xc8, 0x01]);
        assert_eq!(enc.len(), 203);
    }

    #[test]
    fn response_decoding() {
        assert_eq!(decode_status(b""), Some(0));
        assert_eq!(decode_status(b"\x08\x01"), Some(SERVING));
        assert_eq!(decode_status(b"\x08\x02"), Some(2));
        // Unknown fields of every wire type are skipped; the last status wins.
        assert_eq!(
            decode_status(b"\x10\x05\x1a\x02ab\x21\0\0\0\0\0\0\0\0\x2d\0\0\0\0\x08\x02\x08\x01"),
            Some(1)
        );
        // Truncated or malformed: no status.
        for bad in [
            &b"\x08"[..],
            b"\x1a\x05ab",
            b"\x00\x01",
            b"\x0f",
            b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        ] {
            assert_eq!(decode_status(bad), None, "{bad:?}");
        }
    }
}
