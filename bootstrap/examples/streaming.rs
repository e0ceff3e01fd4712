// A function that streams its response: each `write` reaches the caller while the handler
// goes on. The event says how many lines to write: {"lines": 3}.
use bootstrap::{run_streaming, stream_fn, Context, HandlerError, ResponseWriter};
use std::io::Write;
use std::time::Duration;

fn count(event: &[u8], _ctx: &Context, out: &mut ResponseWriter) -> Result<(), HandlerError> {
    let event: serde_json::Value = serde_json::from_slice(event)?;
    let lines = event["lines"].as_u64().unwrap_or(3);
    out.set_content_type("text/plain");
    for n in 1..=lines {
        // One write, one chunk: `write!` would send each piece of the format as its own.
        out.write_all(format!("line {n} of {lines}\n").as_bytes())?;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    run_streaming(|| Ok(stream_fn(count)))
}
