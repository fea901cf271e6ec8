//! The room-counting cases of the store suite: how many members a room has, and each
//! transition between none and some answered once.

use futures::future::join_all;

use super::{connection, room, unique};
use crate::protocol::RoomName;
use crate::store::{Connection, ConnectionStore, Left};

/// A backend that counts a room's members counts each live member once; one that cannot
/// says so.
pub async fn member_counts_are_exact_or_not_given(store: &dyn ConnectionStore) {
    let room = RoomName::parse(&unique("counted")).expect("a room name");
    for _ in 0..3 {
        let c = connection("counted");
        store.add(&c).await.expect("add");
        store.join(&c.id, &room).await.expect("join");
        store
            .join(&c.id, &room)
            .await
            .expect("a second join is idempotent");
    }
    let counted = store.member_count(Some(&room)).await.expect("count");
    assert!(matches!(counted, None | Some(3)), "{counted:?}");
    let everyone = store.member_count(None).await.expect("count");
    assert!(everyone.is_none_or(|n| n >= 3), "{everyone:?}");
    let empty = RoomName::parse(&unique("empty")).expect("a room name");
    let none = store.member_count(Some(&empty)).await.expect("count");
    assert!(matches!(none, None | Some(0)), "{none:?}");
}

/// A store that counts members (its `member_count` answers) answers each room's
/// transitions once: of joins at once to an empty room one is the first, of leaves at once
/// one empties it, and a removal names the rooms it emptied. One that does not answers none.
pub async fn rooms_answer_their_first_and_last_member_once(store: &dyn ConnectionStore) {
    /// Members joining and leaving at once.
    const AT_ONCE: usize = 16;
    let r = room();
    let counts = store.member_count(Some(&r)).await.expect("count").is_some();
    let members: Vec<Connection> = (0..AT_ONCE).map(|_| connection(&unique("user"))).collect();
    for c in &members {
        store.add(c).await.expect("add");
    }
    let firsts = join_all(members.iter().map(|c| store.join(&c.id, &r))).await;
    let firsts = firsts.into_iter().map(|f| f.expect("join")).filter(|f| *f);
    assert_eq!(firsts.count(), usize::from(counts), "one first member");
    let again = store.join(&members[0].id, &r).await.expect("join again");
    assert!(!again, "a member joining again is not the first");

    let (last, rest) = members.split_first().expect("members");
    let lefts = join_all(rest.iter().map(|c| store.leave(&c.id, &r))).await;
    let lefts: Vec<Left> = lefts.into_iter().map(|l| l.expect("leave")).collect();
    assert!(
        lefts.iter().all(|l| l.was_member && !l.emptied),
        "{lefts:?}"
    );
    let removed = store.remove(&last.id).await.expect("remove");
    let expected = if counts { vec![r.clone()] } else { vec![] };
    assert_eq!(
        removed.emptied, expected,
        "the last member's removal empties it"
    );

    let c = &rest[0];
    assert_eq!(store.join(&c.id, &r).await.expect("join"), counts);
    let left = store.leave(&c.id, &r).await.expect("leave");
    assert_eq!((left.was_member, left.emptied), (true, counts));
    let left = store.leave(&c.id, &r).await.expect("leave again");
    assert_eq!((left.was_member, left.emptied), (false, false));
}

/// Presence lists a room's live members with their users, at most
/// [`MAX_PRESENCE_MEMBERS`](crate::protocol::MAX_PRESENCE_MEMBERS), and counts all of them,
/// whether the backend counts rooms or not; a member that left is neither listed nor
/// counted.
pub async fn presence_lists_and_counts_live_members(store: &dyn ConnectionStore) {
    use crate::protocol::MAX_PRESENCE_MEMBERS;
    let r = room();
    let members: Vec<Connection> = (0..MAX_PRESENCE_MEMBERS + 2)
        .map(|_| connection(&unique("present")))
        .collect();
    for c in &members[..3] {
        store.add(c).await.expect("add");
        store.join(&c.id, &r).await.expect("join");
    }
    store.leave(&members[2].id, &r).await.expect("leave");
    let few = crate::store::presence(store, &r).await.expect("presence");
    assert_eq!(few.count, 2);
    let mut listed: Vec<(String, String)> = few
        .members
        .iter()
        .map(|m| (m.user.clone(), m.connection_id.as_str().to_owned()))
        .collect();
    listed.sort();
    let mut expected: Vec<(String, String)> = members[..2]
        .iter()
        .map(|c| (c.user.clone(), c.id.as_str().to_owned()))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);

    for c in &members[3..] {
        store.add(c).await.expect("add");
    }
    join_all(members[3..].iter().map(|c| store.join(&c.id, &r))).await;
    let many = crate::store::presence(store, &r).await.expect("presence");
    assert_eq!(
        many.count as usize,
        MAX_PRESENCE_MEMBERS + 1,
        "all but the one that left"
    );
    assert_eq!(
        many.members.len(),
        MAX_PRESENCE_MEMBERS,
        "listed up to the cap"
    );
    let empty = crate::store::presence(store, &room())
        .await
        .expect("presence");
    assert_eq!((empty.count, empty.members.len()), (0, 0));
}
