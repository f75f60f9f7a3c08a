//! Pure decoding of Incus's reply envelope and of `GET {operation}/wait` results.
//!
//! Every Incus reply is `{"type":"sync"|"async"|"error","status","status_code","operation",
//! "error_code","error","metadata"}`. The traps handled here (interfaces.md §0, §1.4):
//! `/wait` answers **HTTP 200 with `type:"error"`** both when the operation failed and when
//! the wait itself timed out (`context deadline exceeded`), so the body's `type` and text
//! decide, never the HTTP status alone; and a finished operation vanishes (404) after ~5 s.

use serde::Deserialize;
use serde_json::Value;

use super::types::RunningOperation;

#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    error_code: i64,
    #[serde(default)]
    error: String,
    #[serde(default)]
    metadata: Value,
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// Done: the `metadata`.
    Sync(Value),
    /// Accepted as a background operation (`/1.0/operations/UUID`).
    Async { operation: String },
}

/// Why a reply is not a success.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ReplyError {
    /// Incus said no: its HTTP status (or `error_code`) and text.
    Api { status: u16, message: String },
    /// Not an Incus envelope.
    Decode { detail: String, excerpt: String },
}

/// The outcome of one `GET {operation}/wait?timeout=N`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WaitOutcome {
    /// The operation succeeded; its own `metadata` (exec: `{"return":N,"output":{…}}`).
    Success(Value),
    /// The operation failed with this text and Incus's code (`error_code` of the `/wait`
    /// reply, or the operation's `status_code`: 400 failure, 401 cancelled).
    Failed { message: String, code: u16 },
    /// The wait ended before the operation did; wait again.
    StillRunning,
    /// Incus no longer knows the operation.
    Gone,
}

/// The first bytes of a body, for error messages.
pub(crate) fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]).into_owned();
    let text = text.replace(['\n', '\r'], " ");
    if body.len() > MAX { format!("{text}…") } else { text }
}

fn decode(body: &[u8]) -> Result<Envelope, ReplyError> {
    serde_json::from_slice::<Envelope>(body)
        .map_err(|e| ReplyError::Decode { detail: e.to_string(), excerpt: excerpt(body) })
}

/// Classifies a reply to an ordinary request.
pub(crate) fn parse_reply(http_status: u16, body: &[u8]) -> Result<Reply, ReplyError> {
    let env = match decode(body) {
        Ok(env) => env,
        // A non-JSON error page is still an HTTP error first.
        Err(_) if !(200..300).contains(&http_status) => {
            return Err(ReplyError::Api { status: http_status, message: excerpt(body) });
        }
        Err(e) => return Err(e),
    };
    match env.kind.as_str() {
        "sync" if (200..300).contains(&http_status) => Ok(Reply::Sync(env.metadata)),
        "async" if (200..300).contains(&http_status) => {
            if env.operation.starts_with("/1.0/operations/") {
                Ok(Reply::Async { operation: env.operation })
            } else {
                Err(ReplyError::Decode {
                    detail: format!("async reply without a valid operation (`{}`)", env.operation),
                    excerpt: excerpt(body),
                })
            }
        }
        "error" => {
            let status = if (200..300).contains(&http_status) {
                u16::try_from(env.error_code).unwrap_or(500)
            } else {
                http_status
            };
            let message =
                if env.error.is_empty() { "(no error text)".to_string() } else { env.error };
            Err(ReplyError::Api { status, message })
        }
        other => {
            if (200..300).contains(&http_status) {
                Err(ReplyError::Decode {
                    detail: format!("unexpected reply type `{other}` with HTTP {http_status}"),
                    excerpt: excerpt(body),
                })
            } else {
                Err(ReplyError::Api { status: http_status, message: excerpt(body) })
            }
        }
    }
}

/// Classifies a reply to `GET {operation}/wait?timeout=N`.
pub(crate) fn parse_wait(http_status: u16, body: &[u8]) -> Result<WaitOutcome, ReplyError> {
    match parse_reply(http_status, body) {
        Ok(Reply::Sync(op)) => Ok(operation_outcome(&op)),
        Ok(Reply::Async { operation }) => Err(ReplyError::Decode {
            detail: format!("`/wait` answered with another operation `{operation}`"),
            excerpt: excerpt(body),
        }),
        Err(ReplyError::Api { status, message }) => {
            if message.contains("context deadline exceeded") {
                Ok(WaitOutcome::StillRunning)
            } else if status == 404 && message.contains("not found") {
                Ok(WaitOutcome::Gone)
            } else {
                Ok(WaitOutcome::Failed { message, code: status })
            }
        }
        Err(e) => Err(e),
    }
}

/// Classifies an operation object (`{"status":"Success","err":"","metadata":…}`).
pub(crate) fn operation_outcome(op: &Value) -> WaitOutcome {
    let status = op.get("status").and_then(Value::as_str).unwrap_or("");
    let err = op.get("err").and_then(Value::as_str).unwrap_or("");
    let metadata = op.get("metadata").cloned().unwrap_or(Value::Null);
    let code = op
        .get("status_code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .unwrap_or(400);
    match status {
        "Success" => WaitOutcome::Success(metadata),
        "Failure" | "Cancelled" => WaitOutcome::Failed {
            code,
            message: if err.is_empty() {
                format!("operation ended with status {status}")
            } else {
                err.to_string()
            },
        },
        // Pending, Running, Cancelling, or an unknown status: not finished.
        _ => WaitOutcome::StillRunning,
    }
}

/// The operations of `GET /1.0/operations?recursion=1` (metadata: lists of operations by
/// status, `{"running":[…],"success":[…]}`) that are still running on one of `instances`.
///
/// Only `task` operations count: they run to completion on their own and hold Incus's
/// per-instance lock (create, start, stop, restart, update, delete, snapshot, and an exec
/// a killed agent started). `websocket` operations (an operator's interactive `incus
/// exec`, a console) and `token` operations end only when someone disconnects, and lock
/// nothing.
pub(crate) fn running_operations(list: &Value, instances: &[String]) -> Vec<RunningOperation> {
    let groups: Vec<&Value> = match list {
        Value::Object(by_status) => by_status.values().collect(),
        Value::Array(_) => vec![list],
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for op in groups.into_iter().filter_map(Value::as_array).flatten() {
        let text = |key: &str| op.get(key).and_then(Value::as_str).unwrap_or("");
        if text("class") != "task" || operation_outcome(op) != WaitOutcome::StillRunning {
            continue;
        }
        let id = text("id");
        let uuid_like =
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !uuid_like {
            continue;
        }
        let named: Vec<&str> = op
            .pointer("/resources/instances")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(instance_of)
            .collect();
        if let Some(instance) = instances.iter().find(|i| named.contains(&i.as_str())) {
            out.push(RunningOperation {
                operation: format!("/1.0/operations/{id}"),
                description: text("description").to_string(),
                instance: instance.clone(),
            });
        }
    }
    out
}

/// `/1.0/instances/NAME` (or `…/NAME/snapshots/S`, `…/NAME?project=P`) → `NAME`.
fn instance_of(resource: &str) -> Option<&str> {
    let rest = resource.strip_prefix("/1.0/instances/")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replies_are_classified_by_body_type_and_http_status() {
        let op = "/1.0/operations/1bdff0ee-5186-4ff9-8553-d41679ec3953";
        let cases: Vec<(&str, u16, String, Result<Reply, ReplyError>)> = vec![
            (
                "sync list",
                200,
                json!({"type":"sync","status":"Success","status_code":200,"operation":"","error_code":0,"error":"","metadata":["/1.0/instances/t1"]}).to_string(),
                Ok(Reply::Sync(json!(["/1.0/instances/t1"]))),
            ),
            (
                "sync created (profiles)",
                201,
                json!({"type":"sync","status":"Success","status_code":200,"metadata":null}).to_string(),
                Ok(Reply::Sync(Value::Null)),
            ),
            (
                "async create",
                202,
                json!({"type":"async","status":"Operation created","status_code":100,"operation":op,"error_code":0,"error":"","metadata":{"id":"1bdff0ee","status":"Running"}}).to_string(),
                Ok(Reply::Async { operation: op.to_string() }),
            ),
            (
                "async without operation",
                202,
                json!({"type":"async","operation":""}).to_string(),
                Err(ReplyError::Decode {
                    detail: "async reply without a valid operation (``)".into(),
                    excerpt: r#"{"operation":"","type":"async"}"#.into(),
                }),
            ),
            (
                "missing instance",
                404,
                json!({"type":"error","status":"","status_code":0,"operation":"","error_code":404,"error":"Failed to fetch instance \"nonexistent\" in project \"default\": Instance not found","metadata":null}).to_string(),
                Err(ReplyError::Api { status: 404, message: "Failed to fetch instance \"nonexistent\" in project \"default\": Instance not found".into() }),
            ),
            (
                "stale etag",
                412,
                json!({"type":"error","error_code":412,"error":"ETag doesn't match: ab7e vs 39d7"}).to_string(),
                Err(ReplyError::Api { status: 412, message: "ETag doesn't match: ab7e vs 39d7".into() }),
            ),
            (
                "error envelope with HTTP 200 takes error_code",
                200,
                json!({"type":"error","error_code":400,"error":"The instance is already stopped"}).to_string(),
                Err(ReplyError::Api { status: 400, message: "The instance is already stopped".into() }),
            ),
            (
                "error without text",
                500,
                json!({"type":"error","error_code":500,"error":""}).to_string(),
                Err(ReplyError::Api { status: 500, message: "(no error text)".into() }),
            ),
            (
                "plain-text error page",
                502,
                "Bad Gateway\n".to_string(),
                Err(ReplyError::Api { status: 502, message: "Bad Gateway ".into() }),
            ),
            (
                "garbage with 200",
                200,
                "<html>".to_string(),
                Err(ReplyError::Decode {
                    detail: "expected value at line 1 column 1".into(),
                    excerpt: "<html>".into(),
                }),
            ),
            (
                "unknown type",
                200,
                json!({"type":"weird"}).to_string(),
                Err(ReplyError::Decode {
                    detail: "unexpected reply type `weird` with HTTP 200".into(),
                    excerpt: r#"{"type":"weird"}"#.into(),
                }),
            ),
        ];
        for (name, status, body, want) in cases {
            assert_eq!(parse_reply(status, body.as_bytes()), want, "case `{name}`");
        }
    }

    #[test]
    fn wait_results_distinguish_success_failure_timeout_and_gone() {
        let cases: Vec<(&str, u16, String, WaitOutcome)> = vec![
            (
                "success with exec metadata",
                200,
                json!({"type":"sync","status":"Success","status_code":200,"metadata":{"id":"341a","class":"task","status":"Success","status_code":200,"err":"","metadata":{"output":{"1":"/o","2":"/e"},"return":3}}}).to_string(),
                WaitOutcome::Success(json!({"output":{"1":"/o","2":"/e"},"return":3})),
            ),
            (
                "success without metadata",
                200,
                json!({"type":"sync","metadata":{"status":"Success","err":"","metadata":null}}).to_string(),
                WaitOutcome::Success(Value::Null),
            ),
            (
                "failure reported as HTTP 200 type error",
                200,
                json!({"type":"error","status":"","status_code":0,"operation":"","error_code":500,"error":"The instance is already running","metadata":null}).to_string(),
                WaitOutcome::Failed { message: "The instance is already running".into(), code: 500 },
            ),
            (
                "wait timeout reported as HTTP 200 type error",
                200,
                json!({"type":"error","status":"","status_code":0,"operation":"","error_code":500,"error":"context deadline exceeded","metadata":null}).to_string(),
                WaitOutcome::StillRunning,
            ),
            (
                "command not found",
                200,
                json!({"type":"error","error_code":400,"error":"Command not found"}).to_string(),
                WaitOutcome::Failed { message: "Command not found".into(), code: 400 },
            ),
            (
                "websocket never connected",
                200,
                json!({"type":"error","error_code":500,"error":"Timed out waiting for websockets to connect"}).to_string(),
                WaitOutcome::Failed {
                    message: "Timed out waiting for websockets to connect".into(),
                    code: 500,
                },
            ),
            (
                "operation forgotten",
                404,
                json!({"type":"error","error_code":404,"error":"Operation not found"}).to_string(),
                WaitOutcome::Gone,
            ),
            (
                "sync failure object",
                200,
                json!({"type":"sync","metadata":{"status":"Failure","status_code":400,"err":"Command not found","metadata":{"return":127}}}).to_string(),
                WaitOutcome::Failed { message: "Command not found".into(), code: 400 },
            ),
            (
                "cancelled without text",
                200,
                json!({"type":"sync","metadata":{"status":"Cancelled","status_code":401,"err":""}}).to_string(),
                WaitOutcome::Failed {
                    message: "operation ended with status Cancelled".into(),
                    code: 401,
                },
            ),
            (
                "still running (timeout=0 style)",
                200,
                json!({"type":"sync","metadata":{"status":"Running","err":""}}).to_string(),
                WaitOutcome::StillRunning,
            ),
        ];
        for (name, status, body, want) in cases {
            assert_eq!(parse_wait(status, body.as_bytes()), Ok(want), "case `{name}`");
        }
    }

    #[test]
    fn wait_rejects_bodies_that_are_not_envelopes() {
        assert!(matches!(parse_wait(200, b"not json"), Err(ReplyError::Decode { .. })));
        assert!(matches!(
            parse_wait(200, br#"{"type":"async","operation":"/1.0/operations/x"}"#),
            Err(ReplyError::Decode { .. })
        ));
    }

    #[test]
    fn running_task_operations_on_the_given_instances_are_found() {
        let op = |id: &str, class: &str, status: &str, desc: &str, resources: Value| {
            json!({"id": id, "class": class, "description": desc, "status": status,
                   "status_code": 103, "resources": {"instances": resources}, "err": ""})
        };
        let list = json!({
            "running": [
                op("c1", "task", "Running", "Creating instance", json!(["/1.0/instances/web-blue"])),
                op("s1", "task", "Pending", "Snapshotting instance",
                   json!(["/1.0/instances/db", "/1.0/instances/db/snapshots/veza-1"])),
                op("p1", "task", "Running", "Starting instance", json!(["/1.0/instances/web-green?project=p"])),
                op("x1", "websocket", "Running", "Executing command", json!(["/1.0/instances/web-blue"])),
                op("t1", "token", "Running", "Migration token", json!(["/1.0/instances/web-blue"])),
                op("o1", "task", "Running", "Starting instance", json!(["/1.0/instances/other"])),
                op("../x", "task", "Running", "Starting instance", json!(["/1.0/instances/db"])),
            ],
            "success": [op("d1", "task", "Success", "Deleting instance", json!(["/1.0/instances/db"]))],
            "failure": [op("f1", "task", "Failure", "Starting instance", json!(["/1.0/instances/db"]))],
        });
        let mine: Vec<String> =
            ["web-blue", "web-green", "db"].iter().map(|s| s.to_string()).collect();
        let found: Vec<(String, String, String)> = running_operations(&list, &mine)
            .into_iter()
            .map(|o| (o.operation, o.description, o.instance))
            .collect();
        let want = [
            ("/1.0/operations/c1", "Creating instance", "web-blue"),
            ("/1.0/operations/s1", "Snapshotting instance", "db"),
            ("/1.0/operations/p1", "Starting instance", "web-green"),
        ];
        let want: Vec<(String, String, String)> =
            want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
        assert_eq!(found, want);
        // Nothing running, or nothing at all (`null` metadata), finds nothing.
        assert!(running_operations(&json!({"success": []}), &mine).is_empty());
        assert!(running_operations(&Value::Null, &mine).is_empty());
    }

    #[test]
    fn excerpt_is_bounded_and_single_line() {
        let long = vec![b'a'; 500];
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), 201);
        assert!(e.ends_with('…'));
        assert_eq!(excerpt(b"a\nb"), "a b");
    }
}
