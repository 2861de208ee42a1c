//! `UnixConnection` over real unix sockets.

use std::io;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use milter_io::{UnixConnection, accept, register_listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn connect_accept_and_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = register_listener(UnixListener::bind(&path).unwrap()).unwrap();
    let mut mta = UnixConnection::connect(&path).await.unwrap();
    let mut filter = accept(&listener).await.unwrap();

    mta.write_all(b"\0\0\0\x01Q").await.unwrap();
    let mut frame = [0; 5];
    filter.read_exact(&mut frame).await.unwrap();
    assert_eq!(&frame, b"\0\0\0\x01Q");

    // Shutting down the write half is an end of stream for the peer.
    filter.write_all(b"c").await.unwrap();
    filter.shutdown().await.unwrap();
    let mut rest = Vec::new();
    mta.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"c");
}

/// Both sides write 4 MiB before reading anything, so both socket buffers
/// fill and both writers go through the would-block path (registering for
/// write readiness) while the other reads.
#[tokio::test]
async fn writes_larger_than_the_socket_buffer_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = register_listener(UnixListener::bind(&path).unwrap()).unwrap();
    let mta = UnixConnection::connect(&path).await.unwrap();
    let filter = accept(&listener).await.unwrap();
    let len = 4 << 20;

    let exchange = |conn: UnixConnection, seed: u8| async move {
        let (mut rd, mut wr) = tokio::io::split(conn);
        let writer = async move {
            wr.write_all(&pattern(len, seed)).await.unwrap();
            wr.flush().await.unwrap();
            wr
        };
        let reader = async move {
            let mut got = vec![0; len];
            rd.read_exact(&mut got).await.unwrap();
            got
        };
        let (_, got) = tokio::join!(writer, reader);
        got
    };
    let (from_filter, from_mta) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(exchange(mta, 1), exchange(filter, 2))
    })
    .await
    .expect("the exchange finishes");
    assert!(
        from_filter == pattern(len, 2),
        "the MTA got the filter's bytes intact"
    );
    assert!(
        from_mta == pattern(len, 1),
        "the filter got the MTA's bytes intact"
    );
}

#[tokio::test]
async fn connect_to_nothing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = UnixConnection::connect(dir.path().join("missing.sock"))
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), io::ErrorKind::NotFound);

    // A socket file nobody listens on any more.
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).unwrap());
    let stale = UnixConnection::connect(&path).await.unwrap_err();
    assert_eq!(stale.kind(), io::ErrorKind::ConnectionRefused);
}

/// A listener with a full queue makes a non-blocking connect fail with
/// EAGAIN; `connect` waits for room instead, as a blocking connect does.
#[tokio::test]
async fn connect_waits_for_room_in_a_full_listen_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&socket2::SockAddr::unix(&path).unwrap())
        .unwrap();
    socket.listen(1).unwrap();
    let listener: UnixListener = socket.into();

    // Fill the queue.
    let address = socket2::SockAddr::unix(&path).unwrap();
    let mut queued = Vec::new();
    loop {
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        match s.connect(&address) {
            Ok(()) => queued.push(s),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("unexpected connect error: {e}"),
        }
        assert!(queued.len() < 1000, "the listen queue never filled");
    }

    let waiting = tokio::spawn(UnixConnection::connect(path.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "connect gave up on a full queue");

    // Accepting one makes room.
    let _first = listener.accept().unwrap();
    let conn = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("connect finishes once there is room")
        .unwrap()
        .unwrap();
    drop(conn);
}
