//! The service's protobuf codec: prost's, except that a request the server
//! cannot parse is the client's fault and says so.
//!
//! tonic reports any undecodable message as INTERNAL, the code the gRPC
//! library table gives for "error parsing request proto". For a server that
//! takes media from clients it does not control, a malformed `ClientMessage`
//! or `GetInfoRequest` is bad input: it gets INVALID_ARGUMENT and names the
//! message type. Responses a client cannot parse stay INTERNAL.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Which side of a call a decoded message comes from.
pub trait Direction {
    /// Whether the message is sent by clients (a request).
    const REQUEST: bool;
    /// Its protobuf name, for errors.
    const NAME: &'static str;
}

macro_rules! direction {
    ($($ty:ident: $request:expr),* $(,)?) => {
        $(impl Direction for crate::v1::$ty {
            const REQUEST: bool = $request;
            const NAME: &'static str = concat!("avlm.v1.", stringify!($ty));
        })*
    };
}

direction!(
    ClientMessage: true,
    GetInfoRequest: true,
    ServerMessage: false,
    ServerInfo: false,
);

/// prost's codec with [`RequestDecoder`] for decoding.
#[derive(Debug, Clone)]
pub struct AvlmCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for AvlmCodec<T, U> {
    fn default() -> Self {
        AvlmCodec(PhantomData)
    }
}

impl<T, U> Codec for AvlmCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Direction + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// prost's decoder; a request that does not parse is INVALID_ARGUMENT.
#[derive(Debug)]
pub struct RequestDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default + Direction> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| {
            if U::REQUEST && s.code() == Code::Internal {
                Status::invalid_argument(format!(
                    "the message is not a valid {} protobuf: {}",
                    U::NAME,
                    s.message()
                ))
            } else {
                s
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
