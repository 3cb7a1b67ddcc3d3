//! The `typed_messages` example, built and run to its end with its output checked: alone (it
//! serves and re-executes itself as the sender), and as two programs started apart that meet by
//! name. Every wait has a deadline; every name is checked to be gone from /dev/shm at the end.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use common::{build_example, run_with_deadline, unique_name};

const DEADLINE: Duration = Duration::from_secs(60);

fn pid_after(text: &str, key: &str) -> u32 {
    let at = text.find(key).unwrap_or_else(|| panic!("{key:?} not in:\n{text}")) + key.len();
    text[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// The server's lines, in order, must tell every message the sender made of `words`.
fn check_server_lines(stdout: &str, words: &[&str]) {
    let server: Vec<&str> = stdout.lines().filter(|l| l.starts_with("server:")).collect();
    let text = words.join(" ");
    let lens: Vec<String> = words.iter().map(|w| w.len().to_string()).collect();
    let sum: usize = words.iter().map(|w| w.len()).sum();
    let longest = words.iter().max_by_key(|w| w.len()).unwrap();
    let want = [
        "server: got Hello from \"typed_messages sender\" (pid ".to_owned(),
        format!("server: got Text \"{text}\" ({} bytes)", text.len()),
        format!("server: got Numbers [{}]: {} numbers adding up to {sum}", lens.join(", "), words.len()),
        format!("server: got Summary: {} words, the longest is \"{longest}\"", words.len()),
        "server: got Bye from pid ".to_owned(),
        "server: received 5 messages; every sender has said goodbye".to_owned(),
    ];
    assert_eq!(server.len(), want.len(), "{stdout}");
    for (line, want) in server.iter().zip(&want) {
        assert!(line.starts_with(want.as_str()), "{line:?} should start with {want:?}:\n{stdout}");
    }
}

#[test]
fn typed_messages_alone_serves_and_sends_from_a_second_program_and_ends_on_its_own() {
    let exe = build_example("typed_messages");
    let out = run_with_deadline(&mut Command::new(&exe), DEADLINE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let main = pid_after(&stdout, "main (pid ");
    let server = pid_after(&stdout, "server (pid ");
    let sender = pid_after(&stdout, "sender (pid ");
    assert_eq!(main, server, "main serves:\n{stdout}");
    assert_ne!(server, sender, "the sender is another process:\n{stdout}");
    assert_eq!(pid_after(&stdout, "got Hello from \"typed_messages sender\" (pid "), sender, "{stdout}");
    assert_eq!(pid_after(&stdout, "got Bye from pid "), sender, "{stdout}");
    check_server_lines(&stdout, &["hello", "from", "another", "program"]);
    assert!(stdout.contains("the sender ended with exit status: 0"), "{stdout}");
    assert!(stdout.contains(&format!("/dev/shm/typed-messages-{main} is removed")), "{stdout}");
    assert!(stdout.lines().last().unwrap().contains("the program ended on its own"), "{stdout}");
    assert!(!std::path::Path::new("/dev/shm").join(format!("typed-messages-{main}")).exists());
}

#[test]
fn typed_messages_serve_and_send_meet_by_name_as_two_programs() {
    let exe = build_example("typed_messages");
    let name = unique_name("typed-msgs");
    let mut server = Command::new(&exe)
        .args(["serve", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server");
    // Read the server's lines on a thread; wait (with a deadline) for it to be ready.
    let (lines_tx, lines_rx) = channel::<String>();
    let reader = BufReader::new(server.stdout.take().unwrap());
    let pump = std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let err = common::drain(Box::new(server.stderr.take().unwrap()));
    let start = Instant::now();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("waiting for senders")) {
        let left = DEADLINE.checked_sub(start.elapsed()).unwrap_or_else(|| {
            let _ = server.kill();
            panic!("the server never said it was ready: {seen:?}")
        });
        match lines_rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = server.kill();
                let _ = server.wait();
                panic!("the server never said it was ready: {seen:?}");
            }
        }
    }
    assert!(std::path::Path::new("/dev/shm").join(&name).exists(), "ready, but /dev/shm/{name} is missing");

    let words = ["typed", "rings", "carry", "enums"];
    let sent = run_with_deadline(Command::new(&exe).args(["send", &name]).args(words), DEADLINE);
    let sent_out = String::from_utf8_lossy(&sent.stdout);
    assert!(sent.status.success(), "{}\n{sent_out}\n{}", sent.status, String::from_utf8_lossy(&sent.stderr));
    assert!(sent_out.contains("sender: done"), "{sent_out}");

    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = server.kill();
            let _ = server.wait();
            panic!("the server did not end after its sender left");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    pump.join().unwrap();
    seen.extend(lines_rx.try_iter());
    let stdout = seen.join("\n");
    assert!(status.success(), "{status}\n{stdout}\n{}", String::from_utf8_lossy(&err.join().unwrap()));
    check_server_lines(&stdout, &words);
    assert_eq!(pid_after(&stdout, "got Bye from pid "), pid_after(&sent_out, "sender (pid "), "{stdout}");
    assert!(!std::path::Path::new("/dev/shm").join(&name).exists(), "/dev/shm/{name} left behind");
}

/// The `crawl` example over a tree made here: a row per file as it is done, with the right
/// counts and top word, then the right totals and the context's counts; it ends on its own.
#[test]
fn crawl_counts_every_file_of_a_tree_and_ends_on_its_own() {
    let exe = build_example("crawl");
    let dir = std::env::temp_dir().join(unique_name("crawl-tree"));
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    let mut files = Vec::new();
    for i in 0..40usize {
        let rel = match i % 3 {
            0 => format!("f{i}.txt"),
            1 => format!("sub/f{i}.txt"),
            _ => format!("sub/deeper/f{i}.txt"),
        };
        // File i: i + 1 lines of "alpha beta", and the word "unsafe" i times on a last line.
        let mut text = "alpha beta\n".repeat(i + 1);
        text.push_str(&"unsafe ".repeat(i));
        text.push('\n');
        std::fs::write(dir.join(&rel), &text).unwrap();
        files.push((rel, i));
    }
    let out = run_with_deadline(Command::new(&exe).arg(&dir), DEADLINE);
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("crawl: 40 files under "), "{stdout}");
    let (mut lines, mut words) = (0, 0);
    for (rel, i) in &files {
        let row = stdout
            .lines()
            .find(|l| l.ends_with(&format!("/{rel}")))
            .unwrap_or_else(|| panic!("no row for {rel}:\n{stdout}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        let (l, w) = (i + 2, 2 * (i + 1) + i);
        assert_eq!((cols[1], cols[2]), (l.to_string().as_str(), w.to_string().as_str()), "{row}");
        // "alpha" and "beta" appear i + 1 times each, "unsafe" i times: alpha wins the tie.
        assert_eq!((cols[3], cols[4]), ("alpha", format!("({})", i + 1).as_str()), "{row}");
        lines += l;
        words += w;
    }
    let unsafe_total: usize = (0..40).sum();
    assert!(
        stdout.contains(&format!("total: 40 files, {lines} lines, {words} words (0 could not be read)")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("  unsafe   {unsafe_total:>6} times; most in /f39.txt")), "{stdout}");
    assert!(stdout.lines().last().unwrap().contains("the program ended on its own"), "{stdout}");
}

/// With no argument it crawls the crate's own `src/`.
#[test]
fn crawl_defaults_to_the_crates_own_sources() {
    let exe = build_example("crawl");
    let out = run_with_deadline(&mut Command::new(&exe), DEADLINE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", out.status);
    assert!(stdout.contains("/src; 4 worker processes"), "{stdout}");
    assert!(stdout.contains("/pool/archived.rs"), "{stdout}");
    assert!(stdout.contains("(0 could not be read)"), "{stdout}");
}
