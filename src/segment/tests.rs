use super::*;

fn unique(tag: &str) -> String {
    use std::sync::atomic::AtomicUsize;
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("rp-unit-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn builder() -> SegmentBuilder {
    SegmentBuilder::new(SegmentKind::User(1), Fingerprint::of::<u64>()).payload_len(10_000)
}

#[test]
fn names_are_checked() {
    for bad in ["", "a/b", "x\0y", ".", ".."] {
        assert!(matches!(validate_name(bad), Err(SegmentError::InvalidName { .. })), "{bad:?}");
    }
    assert!(validate_name(&"x".repeat(256)).is_err());
    assert!(validate_name(&"x".repeat(255)).is_ok());
    let e = builder().named("a/b", |_| Ok(())).unwrap_err();
    assert!(e.to_string().contains("'/'"), "{e}");
}

#[test]
fn create_open_and_unlink_by_creator_only() {
    let name = unique("basic");
    let seg = builder()
        .named(&name, |u| {
            // SAFETY: the payload is at least 8 bytes and page-aligned.
            unsafe { u.as_ptr().cast::<u64>().as_ptr().write(42) };
            Ok(())
        })
        .unwrap();
    assert!(seg.is_creator());
    assert_eq!(seg.payload_len(), 12_288);
    let other = builder().mode(OpenMode::OpenExisting).named(&name, |_| unreachable!()).unwrap();
    assert!(!other.is_creator());
    // SAFETY: as above; the creator wrote the value before publishing.
    assert_eq!(unsafe { other.payload().cast::<u64>().as_ptr().read() }, 42);
    assert!(matches!(builder().named(&name, |_| Ok(())), Err(SegmentError::AlreadyExists(_))));
    drop(other);
    assert!(Segment::exists(&name), "an opener's drop leaves the name");
    drop(seg);
    assert!(!Segment::exists(&name), "the creator's drop removes it");
    assert!(matches!(builder().mode(OpenMode::OpenExisting).named(&name, |_| Ok(())), Err(SegmentError::NotFound(_))));
}

#[test]
fn kind_and_type_mismatch() {
    let name = unique("mismatch");
    let _seg = builder().named(&name, |_| Ok(())).unwrap();
    let e = SegmentBuilder::new(SegmentKind::User(1), Fingerprint::of::<[u8; 8]>())
        .mode(OpenMode::OpenExisting)
        .named(&name, |_| Ok(()))
        .unwrap_err();
    assert!(matches!(e, SegmentError::TypeMismatch { .. }), "{e}");
    let e = SegmentBuilder::new(SegmentKind::Ring, Fingerprint::of::<u64>())
        .mode(OpenMode::OpenExisting)
        .named(&name, |_| Ok(()))
        .unwrap_err();
    assert!(matches!(e, SegmentError::KindMismatch { .. }), "{e}");
}

#[test]
fn failed_init_leaves_no_name() {
    let name = unique("initfail");
    let e = builder().named(&name, |_| Err(SegmentError::InvalidSize("test"))).unwrap_err();
    assert!(matches!(e, SegmentError::InvalidSize("test")));
    assert!(!Segment::exists(&name));
}

#[test]
fn purge_and_open_or_create() {
    let name = unique("purge");
    let first = builder().named(&name, |_| Ok(())).unwrap();
    let second = builder().mode(OpenMode::PurgeAndCreate).named(&name, |_| Ok(())).unwrap();
    assert!(second.is_creator());
    drop(first); // the name now belongs to `second`: `first` must not remove it
    assert!(Segment::exists(&name));
    let third = builder().mode(OpenMode::OpenOrCreate).named(&name, |_| unreachable!()).unwrap();
    assert!(!third.is_creator());
    drop(second);
    drop(third);
    assert!(!Segment::exists(&name));
    let fourth = builder().mode(OpenMode::OpenOrCreate).named(&name, |_| Ok(())).unwrap();
    assert!(fourth.is_creator());
}

#[test]
fn mirror_maps_the_tail_twice() {
    let seg = SegmentBuilder::new(SegmentKind::User(2), Fingerprint::bytes())
        .payload_len(4 * 4096)
        .mirror_tail(2 * 4096)
        .anonymous(|_| Ok(()))
        .unwrap();
    let base = seg.payload().as_ptr();
    // The payload is 16 KiB followed by an 8 KiB mirror of its last 8 KiB: every address below is
    // mapped and written only by this test.
    let at = |off: usize| base.wrapping_add(off);
    // SAFETY: see above.
    unsafe { at(3 * 4096 + 5).write(7) };
    // SAFETY: see above.
    assert_eq!(unsafe { at(4 * 4096 + 4096 + 5).read() }, 7);
    // SAFETY: see above.
    unsafe { at(4 * 4096 + 9).write(9) };
    // SAFETY: see above.
    assert_eq!(unsafe { at(2 * 4096 + 9).read() }, 9);
}

#[test]
fn file_backed_segment() {
    let dir = std::env::temp_dir().join(unique("file"));
    let seg = builder().file(&dir, |_| Ok(())).unwrap();
    let opened = builder().mode(OpenMode::OpenExisting).file(&dir, |_| Ok(())).unwrap();
    assert_eq!(opened.payload_len(), seg.payload_len());
    drop(opened);
    drop(seg);
    assert!(!dir.exists());
}

#[test]
fn garbage_file_is_refused() {
    let path = std::env::temp_dir().join(unique("garbage"));
    std::fs::write(&path, vec![0xA5u8; 3 * 4096]).unwrap();
    let e = builder().mode(OpenMode::OpenExisting).open_timeout(Duration::from_millis(50)).file(&path, |_| Ok(()));
    assert!(matches!(e, Err(SegmentError::Corrupted { .. })), "{e:?}");
    std::fs::write(&path, vec![0u8; 3 * 4096]).unwrap();
    let t = std::time::Instant::now();
    let e = builder().mode(OpenMode::OpenExisting).open_timeout(Duration::from_millis(50)).file(&path, |_| Ok(()));
    assert!(matches!(e, Err(SegmentError::NotReady(_))), "{e:?}");
    assert!(t.elapsed() >= Duration::from_millis(50));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn an_opener_racing_the_creator_waits_for_the_ready_word() {
    let name = unique("race");
    let created = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let creator = s.spawn(|| {
            builder().named(&name, |u| {
                created.wait();
                // A slow initializer: the opener must wait, not read a half-made segment.
                std::thread::sleep(Duration::from_millis(150));
                // SAFETY: the payload is at least 8 bytes and page-aligned; unpublished yet.
                unsafe { u.as_ptr().cast::<u64>().as_ptr().write(7) };
                Ok(())
            })
        });
        created.wait();
        let t = std::time::Instant::now();
        let opened = builder().mode(OpenMode::OpenExisting).named(&name, |_| unreachable!()).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(100), "the opener did not wait for the creator");
        // SAFETY: published before the open returned.
        assert_eq!(unsafe { opened.payload().cast::<u64>().as_ptr().read() }, 7);
        drop(opened);
        drop(creator.join().unwrap().unwrap());
    });
    assert!(!Segment::exists(&name));
}

/// Test hooks inside the unlink protocol (`unlink_if_named`).
pub(super) mod hooks {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::Backend;

    type Hook = Box<dyn FnOnce() + Send>;
    static BEFORE_UNLINK: Mutex<Option<(String, Hook)>> = Mutex::new(None);
    /// Times an unlinker found another one's inode lock held.
    pub(in crate::segment) static CONTENDED: AtomicUsize = AtomicUsize::new(0);

    /// Runs `f` (once) when an unlinker of the named segment `name` has checked that the name is
    /// its own and is about to unlink it.
    pub(in crate::segment) fn set_before_unlink(name: &str, f: Hook) {
        *BEFORE_UNLINK.lock().unwrap_or_else(|p| p.into_inner()) = Some((name.to_owned(), f));
    }

    pub(in crate::segment) fn before_unlink(backend: &Backend) {
        let Backend::Named(name) = backend else { return };
        let hook = {
            let mut slot = BEFORE_UNLINK.lock().unwrap_or_else(|p| p.into_inner());
            if slot.as_ref().is_some_and(|(n, _)| n == name) { slot.take() } else { None }
        };
        if let Some((_, f)) = hook {
            f();
        }
    }

    pub(in crate::segment) fn contended() {
        CONTENDED.fetch_add(1, Ordering::SeqCst);
    }
}

/// A creator drops its segment while a purger replaces it: at the worst moment (the creator has
/// checked that the name is its own and is about to unlink it) the purger runs. The purger's new
/// segment must survive the old creator's drop.
#[test]
fn a_dropping_creator_never_unlinks_a_purgers_new_segment() {
    use std::sync::atomic::Ordering::SeqCst;
    let name = unique("droprace");
    let first = builder().named(&name, |_| Ok(())).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let purge_name = name.clone();
    hooks::set_before_unlink(
        &name,
        Box::new(move || {
            let before = hooks::CONTENDED.load(SeqCst);
            let purger =
                std::thread::spawn(move || builder().mode(OpenMode::PurgeAndCreate).named(&purge_name, |_| Ok(())));
            // Until the purger is done, or waits for the inode lock that this unlinker holds.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !purger.is_finished() && hooks::CONTENDED.load(SeqCst) == before {
                if std::time::Instant::now() > deadline {
                    break; // reported by the test thread: the purger neither finished nor waited
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = tx.send(purger);
        }),
    );
    drop(first);
    let purger = rx.recv_timeout(Duration::from_secs(30)).expect("the hook ran");
    let second = purger.join().expect("purger thread").expect("purge and create");
    assert!(second.is_creator());
    assert!(Segment::exists(&name), "the old creator's drop unlinked the purger's new segment");
    drop(second);
    assert!(!Segment::exists(&name));
}

/// A creation that fails removes only the file it made.
#[test]
fn a_failed_creation_removes_only_its_own_file() {
    let name = unique("failrace");
    let (tx, rx) = std::sync::mpsc::channel();
    let e = builder()
        .named(&name, |_| {
            // While we initialize, someone purges the name and creates their own segment.
            let theirs = builder().mode(OpenMode::PurgeAndCreate).named(&name, |_| Ok(()));
            let _ = tx.send(theirs);
            Err(SegmentError::InvalidSize("test"))
        })
        .unwrap_err();
    assert!(matches!(e, SegmentError::InvalidSize("test")));
    let theirs = rx.recv().unwrap().expect("their creation");
    assert!(Segment::exists(&name), "our failed creation unlinked their segment");
    drop(theirs);
    assert!(!Segment::exists(&name));
}
