//! Presence: who is in a room, for a socket's `presence` action and the Invoke API's
//! `{"presence":"ROOM"}`. The room's members are listed from the store page by page (never
//! a walk over connections) until [`MAX_PRESENCE_MEMBERS`] are found, each with its user;
//! the count is the store's own count of the room (Redis: the room's set; DynamoDB: its
//! counter item, when it counts rooms; else the room's items, page by page), or, when
//! every member fitted in the list, the list itself, so a room of
//! at most a hundred is counted exactly even while a killed instance's members await their
//! clean-up (they are read back as gone and left out).

use futures::{StreamExt, stream};

use super::{ConnectionStore, StoreError};
use crate::protocol::{MAX_PRESENCE_MEMBERS, Member, Presence, RoomName};

/// Members whose records are read at once.
const READS_AT_ONCE: usize = 16;
/// Ids asked for per page while counting a room whose store cannot count it.
const COUNT_PAGE: usize = 1_000;

/// Who is in `room`.
pub async fn presence(
    store: &dyn ConnectionStore,
    room: &RoomName,
) -> Result<Presence, StoreError> {
    let mut members: Vec<Member> = Vec::new();
    let mut cursor: Option<String> = None;
    let complete = loop {
        let page = store
            .room_members(room, cursor.as_deref(), MAX_PRESENCE_MEMBERS)
            .await?;
        let found: Vec<Result<Option<Member>, StoreError>> = stream::iter(page.items)
            .map(|id| async move {
                Ok(store.get(&id).await?.map(|c| Member {
                    user: c.user,
                    connection_id: id,
                }))
            })
            .buffered(READS_AT_ONCE)
            .collect()
            .await;
        for member in found {
            if let Some(member) = member? {
                members.push(member);
            }
        }
        cursor = page.next;
        if cursor.is_none() {
            break true;
        }
        if members.len() >= MAX_PRESENCE_MEMBERS {
            break false;
        }
    };
    let count = if complete {
        members.len() as u64
    } else {
        match store.member_count(Some(room)).await? {
            Some(count) => count.max(members.len() as u64),
            None => count_by_listing(store, room).await?,
        }
    };
    members.truncate(MAX_PRESENCE_MEMBERS);
    Ok(Presence {
        room: room.clone(),
        count,
        members,
    })
}

/// Counts a room page by page, for a store that keeps no count.
async fn count_by_listing(store: &dyn ConnectionStore, room: &RoomName) -> Result<u64, StoreError> {
    let (mut count, mut cursor) = (0u64, None::<String>);
    loop {
        let page = store
            .room_members(room, cursor.as_deref(), COUNT_PAGE)
            .await?;
        count += page.items.len() as u64;
        cursor = page.next;
        if cursor.is_none() {
            return Ok(count);
        }
    }
}
