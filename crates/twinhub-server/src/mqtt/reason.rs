//! MQTT 5 reason codes by name (MQTT 5.0 §2.4). Packets carry them as
//! bytes; code in this module's users names them. MQTT 3.1.1 has none:
//! the codec drops them, and the connection decides what a 3.1.1 client
//! gets instead (see `connection::retry_later`).

/// Reason codes twinhub sends or reads.
pub mod code {
    pub const SUCCESS: u8 = 0x00;
    /// DISCONNECT: the client wants its will published.
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    /// UNSUBACK: there was no such subscription.
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    /// A message was not stored (store failure, disk reserve, broker state).
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    pub const MALFORMED_PACKET: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
    /// Also sent to a slow consumer that is disconnected.
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;

    /// Codes of 0x80 and above are failures.
    pub fn is_failure(c: u8) -> bool {
        c >= UNSPECIFIED_ERROR
    }
}
