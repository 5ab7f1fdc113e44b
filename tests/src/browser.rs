//! A real browser for tests: Debian's headless Chromium driven through ChromeDriver's W3C
//! WebDriver protocol (JSON over HTTP/1.1 on a loopback port), with a small blocking client of
//! our own. `scripts/setup` installs both (`chromium`, `chromium-driver`: the driver must come
//! from the same build as the browser).
//!
//! Chromium runs with the flags this machine needs (no sandbox as root, no GPU, no background
//! networking to Google's hosts, a fresh profile in a temp dir). Dropping a [`Browser`] ends
//! the WebDriver session (ChromeDriver then stops Chromium) and kills ChromeDriver by its pid.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long ChromeDriver may take to start listening, and Chromium to start a session.
pub const BROWSER_START_TIMEOUT_MS: u64 = 30_000;
/// Deadline of one WebDriver call (a navigation waits for the page's load event).
pub const WEBDRIVER_CALL_TIMEOUT_MS: u64 = 30_000;
/// The window every screenshot has.
pub const WINDOW: (u32, u32) = (1400, 900);

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver on a free loopback port and a headless Chromium session.
    pub fn start() -> Result<Browser, String> {
        for program in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(program).is_file() {
                return Err(format!("{program} is missing: run scripts/setup"));
            }
        }
        let port = crate::cluster::free_port();
        let mut command = Command::new(CHROMEDRIVER);
        crate::cluster::die_with_parent(&mut command);
        let driver = command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {CHROMEDRIVER}: {e}"))?;
        let profile = tempfile::Builder::new()
            .prefix("holdfast-chromium-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_millis(BROWSER_START_TIMEOUT_MS);
        while browser.call("GET", "/status", None).is_err() {
            if Instant::now() > deadline {
                return Err(format!("{CHROMEDRIVER} did not listen on port {port}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let created = browser.call("POST", "/session", Some(&capabilities))?;
        browser.session = created["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session id in {created}"))?
            .to_owned();
        Ok(browser)
    }

    /// Loads `url` and waits for its load event.
    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.call_session("POST", "/url", &json!({ "url": url }))
            .map(drop)
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub fn eval(&self, script: &str) -> Result<Value, String> {
        self.call_session(
            "POST",
            "/execute/sync",
            &json!({ "script": script, "args": [] }),
        )
    }

    /// Evaluates `script` until it returns something other than null or false, every 50 ms
    /// for at most `timeout`: what it returned and how long that took.
    pub fn wait_for(&self, script: &str, timeout: Duration) -> Result<(Value, Duration), String> {
        let started = Instant::now();
        loop {
            let value = self.eval(script)?;
            if !value.is_null() && value != Value::Bool(false) {
                return Ok((value, started.elapsed()));
            }
            if started.elapsed() > timeout {
                let text = self
                    .eval("return document.body.innerText")
                    .unwrap_or_default();
                return Err(format!(
                    "waited {timeout:?} for `{script}`; the page says:\n{}",
                    text.as_str().unwrap_or("")
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<(), String> {
        let value = self.call(
            "GET",
            &format!("/session/{}/screenshot", self.session),
            None,
        )?;
        let png = decode_base64(value.as_str().ok_or("screenshot: no data")?)?;
        if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
            return Err("screenshot: not a PNG".to_owned());
        }
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn call_session(&self, method: &str, path: &str, body: &Value) -> Result<Value, String> {
        self.call(
            method,
            &format!("/session/{}{path}", self.session),
            Some(body),
        )
    }

    /// One WebDriver call: its `value`, or the error ChromeDriver reported.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        let timeout = Some(Duration::from_millis(WEBDRIVER_CALL_TIMEOUT_MS));
        stream
            .set_read_timeout(timeout)
            .map_err(|e| e.to_string())?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let (head, payload) =
            read_response(&mut stream).map_err(|e| format!("{method} {path}: {e}"))?;
        let answer: Value = serde_json::from_str(&payload)
            .map_err(|e| format!("{method} {path}: {e}: {payload}"))?;
        let ok = head.starts_with("HTTP/1.1 2") || head.starts_with("HTTP/1.0 2");
        if !ok {
            return Err(format!("{method} {path}: {}", answer["value"]));
        }
        Ok(answer["value"].clone())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Reads one HTTP/1.1 response: its head and its body (by Content-Length, chunked, or to the
/// end of the connection). ChromeDriver keeps connections open despite `Connection: close`, so
/// reading to the end would wait for the read timeout.
fn read_response(stream: &mut TcpStream) -> Result<(String, String), String> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let mut read = |buffer: &mut Vec<u8>| -> Result<bool, String> {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        buffer.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    };
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if !read(&mut buffer)? {
            return Err("connection closed before the response head".to_owned());
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok());
    let chunked = lower.contains("transfer-encoding: chunked");
    let body_start = head_end + 4;
    loop {
        let body = &buffer[body_start..];
        let complete = match length {
            Some(length) => body.len() >= length,
            None if chunked => body.ends_with(b"0\r\n\r\n"),
            None => false,
        };
        if complete || !read(&mut buffer)? {
            break;
        }
    }
    let body = String::from_utf8_lossy(&buffer[body_start..]).into_owned();
    let body = if chunked { dechunk(&body)? } else { body };
    Ok((head, body))
}

fn dechunk(mut body: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or("bad chunk")?;
        let size = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).ok_or("short chunk")?);
        body = rest.get(size + 2..).ok_or("short chunk")?;
    }
}

fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0);
    for byte in text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
    {
        let value = ALPHABET
            .iter()
            .position(|c| *c == byte)
            .ok_or("not base64")?;
        bits = (bits << 6) | value as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_base64_and_chunks() {
        assert_eq!(super::decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(super::decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(
            super::dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            "abcde"
        );
    }
}
