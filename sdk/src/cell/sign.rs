//! Signed cell events: every event a node emits carries the node's ed25519
//! signature over a domain-separated hash of the event's canonical JSON.
//!
//! The canonical form is the event as JSON with object keys sorted at every
//! level and no whitespace, so a reader can re-derive it from the parsed
//! event whatever the writer's key order or spacing was.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event::CloudEventV1;
use crate::identity::{hex, parse_hex32};
use crate::{EntityId, Keypair};

/// Domain-separation tag of event signatures.
const EVENT_TAG: &[u8] = b"cellmesh/cloudevent/v1";

/// A [`CloudEventV1`] with the emitting node's key and signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedCloudEvent {
    /// The event.
    pub event: CloudEventV1,
    /// Hex public key of the node that emitted it.
    pub signer: String,
    /// Hex ed25519 signature.
    pub signature: String,
}

/// Why a signed event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventSignatureError {
    /// The bytes are not a signed event.
    #[error("signed cell event does not parse: {0}")]
    Parse(String),
    /// `signer` is not a valid public key.
    #[error("event {event_id:?} names an invalid signer key")]
    BadSigner {
        /// The event's id.
        event_id: String,
    },
    /// The signature is malformed or does not match the event: the event
    /// was altered after signing or was not signed by `signer`.
    #[error("event {event_id:?} does not verify against signer {signer}: tampered or forged")]
    Tampered {
        /// The event's id.
        event_id: String,
        /// The claimed signer.
        signer: String,
    },
}

impl SignedCloudEvent {
    /// Signs `event` with `keypair`.
    pub fn sign(event: CloudEventV1, keypair: &Keypair) -> Self {
        let signature = keypair.sign(&message(&event));
        Self {
            event,
            signer: keypair.entity_id().to_string(),
            signature: hex(&signature),
        }
    }

    /// The signer's key, after [`verify`](Self::verify) has passed.
    ///
    /// # Errors
    /// [`EventSignatureError::BadSigner`].
    pub fn signer_id(&self) -> Result<EntityId, EventSignatureError> {
        EntityId::from_hex(&self.signer).map_err(|_| EventSignatureError::BadSigner {
            event_id: self.event.id.clone(),
        })
    }

    /// Checks the signature.
    ///
    /// # Errors
    /// [`EventSignatureError::BadSigner`] or [`EventSignatureError::Tampered`].
    pub fn verify(&self) -> Result<(), EventSignatureError> {
        let signer = self.signer_id()?;
        let tampered = || EventSignatureError::Tampered {
            event_id: self.event.id.clone(),
            signer: self.signer.clone(),
        };
        let signature = parse_signature(&self.signature).ok_or_else(tampered)?;
        if signer.verify(&message(&self.event), &signature) {
            Ok(())
        } else {
            Err(tampered())
        }
    }

    /// The signed event as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings and JSON values always serialize.
        serde_json::to_vec(self).expect("a signed event serializes to JSON")
    }

    /// Parses and verifies a signed event.
    ///
    /// # Errors
    /// [`EventSignatureError::Parse`], or a verification error.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EventSignatureError> {
        let signed: Self =
            serde_json::from_slice(bytes).map_err(|e| EventSignatureError::Parse(e.to_string()))?;
        signed.verify()?;
        Ok(signed)
    }
}

fn parse_signature(text: &str) -> Option<[u8; 64]> {
    if text.len() != 128 || !text.is_ascii() {
        return None;
    }
    let lo = parse_hex32(&text[..64]).ok()?;
    let hi = parse_hex32(&text[64..]).ok()?;
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&lo);
    out[32..].copy_from_slice(&hi);
    Some(out)
}

fn message(event: &CloudEventV1) -> Vec<u8> {
    let mut canonical = Vec::with_capacity(256);
    // An event is strings and JSON values: it always converts.
    let value = serde_json::to_value(event).expect("a cloud event converts to JSON");
    write_canonical(&value, &mut canonical);
    let mut out = EVENT_TAG.to_vec();
    out.extend_from_slice(blake3::hash(&canonical).as_bytes());
    out
}

/// Writes `value` with object keys sorted at every level, no whitespace.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(&Value::String(key.clone()), out);
                out.push(b':');
                write_canonical(&map[key], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        // Scalars have one JSON form.
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;
    use serde_json::json;

    fn event() -> CloudEventV1 {
        CloudEventV1 {
            specversion: "1.0".into(),
            id: "e1".into(),
            source: "urn:test".into(),
            ty: "dev.cellmesh.events.cell.lifecycle.v1.started".into(),
            datacontenttype: Some("application/json".into()),
            time: None,
            traceparent: None,
            data: Some(json!({"cellId": "c", "specId": "c", "nested": {"b": 1, "a": [2, 3]}})),
        }
    }

    #[test]
    fn a_signed_event_verifies_after_a_json_round_trip() {
        let node = Identity::generate();
        let signed = SignedCloudEvent::sign(event(), node.keypair());
        let back = SignedCloudEvent::from_json(&signed.to_json()).unwrap();
        assert_eq!(back, signed);
        assert_eq!(back.signer_id().unwrap(), node.entity_id());
    }

    #[test]
    fn key_order_and_spacing_do_not_matter() {
        let node = Identity::generate();
        let signed = SignedCloudEvent::sign(event(), node.keypair());
        // Re-serialize with keys in another order and with spaces.
        let mut value: Value = serde_json::from_slice(&signed.to_json()).unwrap();
        let data = value["event"]["data"].take();
        let reordered = json!({"nested": data["nested"], "specId": "c", "cellId": "c"});
        value["event"]["data"] = reordered;
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        SignedCloudEvent::from_json(&pretty).unwrap();
    }

    #[test]
    fn tampering_is_rejected_with_the_event_named() {
        let node = Identity::generate();
        let signed = SignedCloudEvent::sign(event(), node.keypair());

        let mut changed = signed.clone();
        changed.event.data = Some(json!({"cellId": "other", "specId": "c"}));
        let err = changed.verify().unwrap_err();
        assert!(matches!(&err, EventSignatureError::Tampered { event_id, .. } if event_id == "e1"));

        let mut retyped = signed.clone();
        retyped.event.ty = "dev.cellmesh.events.cell.lifecycle.v1.destroyed".into();
        assert!(retyped.verify().is_err());

        let mut other_signer = signed.clone();
        other_signer.signer = Identity::generate().entity_id().to_string();
        assert!(other_signer.verify().is_err());

        let mut bad_sig = signed.clone();
        bad_sig.signature = "zz".into();
        assert!(bad_sig.verify().is_err());

        let mut bad_key = signed;
        bad_key.signer = "00".into();
        assert!(matches!(
            bad_key.verify(),
            Err(EventSignatureError::BadSigner { .. })
        ));
        assert!(matches!(
            SignedCloudEvent::from_json(b"{}"),
            Err(EventSignatureError::Parse(_))
        ));
    }
}
