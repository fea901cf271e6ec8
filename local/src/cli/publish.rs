//! `herald-local publish ROOM JSON`: publishes through the Lambda Invoke API with the real
//! AWS SDK client, to `herald-local` (signed with `HERALD_ACCESS_KEY_ID` when it is set,
//! as a gateway with control-plane credentials requires) or to the deployed `publish`
//! function (the SDK's usual environment: profile, region, credentials). With `--count N`
//! it publishes N times, one after another, with a progress bar on stderr.

use std::io::Write;
use std::time::Instant;

use aws_sdk_lambda::primitives::Blob;
use serde_json::{Value, json};

use super::CliError;

/// Width of the progress bar, in characters.
const BAR_WIDTH: usize = 30;

/// Where publishes go.
#[derive(Clone, Debug)]
pub enum Target {
    /// `herald-local`'s Invoke API at this URL (e.g. `http://127.0.0.1:3001`), with the
    /// key pair it checks signatures against, if any.
    Local {
        /// The gateway's HTTP address.
        endpoint: String,
        /// `HERALD_ACCESS_KEY_ID` and `HERALD_SECRET_ACCESS_KEY`.
        keys: Option<(String, String)>,
    },
    /// The deployed function, by name or ARN.
    Aws {
        /// The function.
        function_name: String,
    },
}

/// What to publish.
#[derive(Clone, Debug)]
pub struct PublishOptions {
    /// Where to.
    pub target: Target,
    /// The room.
    pub room: String,
    /// The notification's `data`, as JSON text.
    pub data: String,
    /// How many times.
    pub count: usize,
}

/// Publishes, writing each answer (one) or a summary (several) to `out`.
pub async fn publish(
    options: &PublishOptions,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let data: Value = serde_json::from_str(&options.data)
        .map_err(|e| CliError::Usage(format!("the data is not JSON: {e}")))?;
    if options.count == 0 {
        return Err(CliError::Usage("--count must be at least 1".into()));
    }
    let (config, function) = match &options.target {
        Target::Local { endpoint, keys } => {
            let config = match keys {
                Some((id, secret)) => herald::aws::keyed_sdk_config(endpoint, id, secret),
                None => herald::aws::local_sdk_config(endpoint),
            };
            (config, "publish".to_owned())
        }
        Target::Aws { function_name } => {
            (herald::aws::sdk_config(None).await, function_name.clone())
        }
    };
    let client = aws_sdk_lambda::Client::new(&config);
    let payload = json!({"room": options.room, "data": data}).to_string();
    let started = Instant::now();
    let (mut delivered, mut queued_pages) = (0u64, 0u64);
    let mut last = Value::Null;
    for done in 1..=options.count {
        let answer = client
            .invoke()
            .function_name(&function)
            .payload(Blob::new(payload.as_bytes()))
            .send()
            .await
            .map_err(|e| {
                CliError::Invoke(aws_sdk_lambda::error::DisplayErrorContext(e).to_string())
            })?;
        let body = answer
            .payload()
            .map(|b| b.as_ref().to_vec())
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&body).into_owned();
        if answer.function_error().is_some() {
            return Err(CliError::Function(body));
        }
        last = serde_json::from_str(&body).unwrap_or(Value::String(body));
        delivered += last["delivered"].as_u64().unwrap_or(0);
        queued_pages += last["queued_pages"].as_u64().unwrap_or(0);
        if options.count > 1 {
            progress(done, options.count, started);
        }
    }
    if options.count == 1 {
        writeln!(out, "{last}")?;
    } else {
        eprintln!();
        let secs = started.elapsed().as_secs_f64();
        let mut summary = json!({
            "published": options.count,
            "delivered": delivered,
            "seconds": (secs * 1000.0).round() / 1000.0,
        });
        // Publishes above the shard threshold are delivered after their answers: say so
        // rather than let `delivered` read as everything.
        if queued_pages > 0 {
            summary["queued_pages"] = json!(queued_pages);
        }
        writeln!(out, "{summary}")?;
    }
    Ok(())
}

/// Redraws the progress bar on stderr.
fn progress(done: usize, total: usize, started: Instant) {
    let filled = done * BAR_WIDTH / total;
    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
    eprint!(
        "\r[{}{}] {done}/{total} {rate:.0}/s",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled)
    );
    let _ = std::io::stderr().flush();
}
