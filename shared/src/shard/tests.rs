use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::*;
use crate::gateway::{RecordingGateway, Scripted};
use crate::handlers::{self, Services};
use crate::ids::ConnectionId;
use crate::limits::Limits;
use crate::protocol::{PublishRequest, RoomName};
use crate::store::suite::connection;
use crate::store::{Connections, ForwardingStore, MemoryStore, current_window};

/// Queues jobs in memory, recording each call.
#[derive(Default)]
struct Recorded {
    sends: Mutex<Vec<Vec<PageJob>>>,
    /// Refuse every send after this many.
    fail_after: Option<usize>,
}

impl Recorded {
    fn jobs(&self) -> Vec<PageJob> {
        self.sends
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .cloned()
            .collect()
    }
}

#[async_trait]
impl PageQueue for Recorded {
    async fn enqueue(&self, jobs: Vec<PageJob>) -> Result<(), QueueError> {
        let mut sends = self.sends.lock().unwrap();
        if self.fail_after.is_some_and(|n| sends.len() >= n) {
            return Err(QueueError::Full);
        }
        sends.push(jobs);
        Ok(())
    }
}

/// A store that cannot count a room without reading it, as DynamoDB.
struct Uncounted(MemoryStore);

#[async_trait]
impl ForwardingStore for Uncounted {
    fn inner(&self) -> &dyn ConnectionStore {
        &self.0
    }
    async fn member_count(&self, _room: Option<&RoomName>) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
}

fn room() -> RoomName {
    RoomName::parse("big").unwrap()
}

async fn room_of(store: &dyn ConnectionStore, n: usize) -> Vec<ConnectionId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let c = connection("member");
        store.add(&c).await.unwrap();
        store.join(&c.id, &room()).await.unwrap();
        ids.push(c.id);
    }
    ids
}

#[tokio::test]
async fn the_threshold_is_counted_where_the_store_can_and_read_where_it_cannot() {
    let counted = MemoryStore::new();
    let uncounted = Uncounted(MemoryStore::new());
    let target = Target::Room(room());
    for store in [&counted as &dyn ConnectionStore, &uncounted] {
        room_of(store, 5).await;
        assert_eq!(
            plan(store, &target, 4).await.unwrap(),
            Plan::Sharded,
            "one past"
        );
        assert_eq!(
            plan(store, &Target::Broadcast, 4).await.unwrap(),
            Plan::Sharded
        );
        assert_eq!(
            plan(store, &target, 0).await.unwrap(),
            Plan::Direct,
            "0 is off"
        );
        let user = Target::User("member".into());
        assert_eq!(
            plan(store, &user, 1).await.unwrap(),
            Plan::Direct,
            "never a user"
        );
    }
    assert_eq!(
        plan(&counted, &target, 5).await.unwrap(),
        Plan::Direct,
        "at"
    );
    // A store that had to read them all hands them on, so fan-out does not read again.
    let Plan::Listed(mut read) = plan(&uncounted, &target, 5).await.unwrap() else {
        panic!("listed at the threshold");
    };
    read.sort();
    let mut members = Connections::room_members(&uncounted, &room(), None, 10)
        .await
        .unwrap()
        .items;
    members.sort();
    assert_eq!(read, members);
    let ids: Vec<_> = (0..3).map(|i| ConnectionId::new(format!("c{i}"))).collect();
    let listed = Target::Connections(ids);
    assert_eq!(plan(&counted, &listed, 2).await.unwrap(), Plan::Sharded);
    assert_eq!(plan(&counted, &listed, 3).await.unwrap(), Plan::Direct);
}

#[tokio::test]
async fn every_recipient_is_queued_once_in_pages_sent_ten_at_a_time() {
    let store = MemoryStore::new();
    let members = room_of(&store, 10 * MAX_PAGE + 1).await;
    let queue = Recorded::default();
    let payload = Bytes::from_static(b"{\"type\":\"notification\"}");
    let pages = enqueue_pages(&store, &queue, &Target::Room(room()), "n1", &payload)
        .await
        .unwrap();
    assert_eq!(pages, 11, "ten full pages and one of a single member");
    let sends = queue
        .sends
        .lock()
        .unwrap()
        .iter()
        .map(Vec::len)
        .collect::<Vec<_>>();
    assert_eq!(sends, [10, 1]);
    let jobs = queue.jobs();
    let mut seen: HashMap<ConnectionId, usize> = HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        assert_eq!(job.page, i as u64);
        assert!(job.connections.len() <= MAX_PAGE);
        assert_eq!(job.payload, payload);
        assert_eq!(job.notification, "n1");
        for id in &job.connections {
            *seen.entry(id.clone()).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), members.len());
    assert!(
        seen.values().all(|n| *n == 1),
        "each member in exactly one page"
    );
}

#[tokio::test]
async fn a_queue_that_fails_midway_says_how_many_pages_it_took() {
    let store = MemoryStore::new();
    room_of(&store, 12 * MAX_PAGE).await;
    let queue = Recorded {
        fail_after: Some(1),
        ..Recorded::default()
    };
    let payload = Bytes::from_static(b"{}");
    let err = enqueue_pages(&store, &queue, &Target::Room(room()), "n", &payload)
        .await
        .unwrap_err();
    assert!(matches!(err, ShardError::Queue { queued: 10, .. }), "{err}");
}

#[test]
fn a_page_job_travels_as_json_with_its_notification_unescaped() {
    let job = PageJob {
        notification: "n1".into(),
        page: 3,
        connections: vec![ConnectionId::new("a="), ConnectionId::new("b=")],
        payload: Bytes::from_static(b"{\"type\":\"notification\",\"data\":{\"q\":\"\\\"\"}}"),
    };
    let body = job.to_json();
    assert!(
        body.contains("\"payload\":{\"type\":\"notification\""),
        "{body}"
    );
    assert_eq!(PageJob::from_json(&body).unwrap(), job);

    assert!(matches!(
        PageJob::from_json("{\"page\":1}"),
        Err(JobError::Malformed(_))
    ));
    let empty = json!({"notification":"n","page":0,"connections":[],"payload":{}});
    assert!(matches!(
        PageJob::from_json(&empty.to_string()),
        Err(JobError::Size(0))
    ));
    let ids: Vec<String> = (0..=MAX_PAGE).map(|i| format!("c{i}")).collect();
    let over = json!({"notification":"n","page":0,"connections":ids,"payload":{}});
    assert!(matches!(
        PageJob::from_json(&over.to_string()),
        Err(JobError::Size(n)) if n == MAX_PAGE + 1
    ));
    let at = json!({"notification":"n","page":0,"connections":ids[..MAX_PAGE],"payload":{}});
    assert!(PageJob::from_json(&at.to_string()).is_ok());
}

#[tokio::test]
async fn the_budget_never_lets_a_window_hold_more_than_its_share() {
    let store: Arc<dyn ConnectionStore> = Arc::new(MemoryStore::new());
    // 200 a second: windows of 100 ms, 20 posts each.
    let budget = PostBudget::new(store.clone(), 200).unwrap();
    assert_eq!(budget.per_window(), 20);
    let started = Instant::now();
    let mut windows: HashMap<i64, u32> = HashMap::new();
    for _ in 0..100 {
        budget.take(1).await.unwrap();
        let (index, _) = current_window(crate::ids::now_ms(), BUDGET_WINDOW);
        *windows.entry(index).or_default() += 1;
    }
    assert!(windows.values().all(|n| *n <= 20), "{windows:?}");
    // 100 posts at 20 a window need at least five windows: the first may be nearly over
    // when they start, the last just begun when they end, and three whole ones between.
    assert!(
        started.elapsed() >= BUDGET_WINDOW * 3,
        "{:?}",
        started.elapsed()
    );
    assert!(PostBudget::new(store.clone(), 0).is_none(), "0 is unpaced");
    let slow = PostBudget::new(store, 5).unwrap();
    assert_eq!(
        slow.per_window(),
        5,
        "under ten a second, counted per second"
    );
}

#[tokio::test]
async fn two_budgets_on_one_store_share_it() {
    let store: Arc<dyn ConnectionStore> = Arc::new(MemoryStore::new());
    let (a, b) = (
        PostBudget::new(store.clone(), 100).unwrap(),
        PostBudget::new(store, 100).unwrap(),
    );
    let started = Instant::now();
    let (a, b) = (&a, &b);
    let both = futures::future::join(
        async move {
            for _ in 0..20 {
                a.take(1).await.unwrap();
            }
        },
        async move {
            for _ in 0..20 {
                b.take(1).await.unwrap();
            }
        },
    );
    both.await;
    // 40 posts at 10 a window need four windows, so two whole ones pass.
    assert!(
        started.elapsed() >= BUDGET_WINDOW * 2,
        "{:?}",
        started.elapsed()
    );
}

fn services(store: Arc<dyn ConnectionStore>, threshold: usize, queue: Arc<Recorded>) -> Services {
    let mut services = Services::new(store, Limits::default(), FanoutConfig::default());
    services.sharding = Sharding {
        threshold,
        queue: Some(queue),
        budget: None,
    };
    services
}

fn request(target: Target) -> PublishRequest {
    PublishRequest {
        target,
        data: json!({"n": 1}),
        idempotency_key: None,
    }
}

#[tokio::test]
async fn a_publish_above_the_threshold_answers_its_pages_and_delivers_through_them() {
    let store: Arc<dyn ConnectionStore> = Arc::new(MemoryStore::new());
    let members = room_of(&*store, 7).await;
    let queue = Arc::new(Recorded::default());
    let gateway = RecordingGateway::new();
    gateway.script(&members[0], Scripted::Gone);
    gateway.script(&members[1], Scripted::ThrottledTimes(1));

    let small = services(store.clone(), 7, queue.clone());
    let direct = handlers::publish_one(&small, &gateway, &request(Target::Room(room())))
        .await
        .unwrap();
    assert_eq!(
        (direct.delivered, direct.queued_pages),
        (6, None),
        "at the threshold"
    );
    assert!(queue.jobs().is_empty());

    let sharded = services(store.clone(), 5, queue.clone());
    let answer = handlers::publish_one(&sharded, &gateway, &request(Target::Room(room())))
        .await
        .unwrap();
    assert_eq!(answer.queued_pages, Some(1));
    let wire = serde_json::to_value(&answer).unwrap();
    let keys: Vec<&str> = wire
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        keys.contains(&"queued_pages") && keys.contains(&"offset"),
        "{wire}"
    );
    assert!(
        !keys.contains(&"delivered"),
        "nothing is claimed yet: {wire}"
    );
    assert_eq!(
        gateway.posts().len(),
        6,
        "no post before a page is delivered"
    );

    let gateway: Arc<dyn Gateway> = Arc::new(gateway);
    let job = queue.jobs().remove(0);
    assert_eq!(
        job.connections.len(),
        6,
        "the gone member was forgotten by the first"
    );
    let counts = handlers::deliver_job(&sharded, &gateway, job).await;
    assert_eq!(counts.delivered, 6);
}

#[tokio::test]
async fn the_deliver_function_reports_only_records_that_are_not_page_jobs() {
    let store: Arc<dyn ConnectionStore> = Arc::new(MemoryStore::new());
    let members = room_of(&*store, 3).await;
    let recording = Arc::new(RecordingGateway::new());
    recording.script(&members[2], Scripted::Gone);
    let gateway: Arc<dyn Gateway> = recording.clone();
    let services = services(store.clone(), 1, Arc::new(Recorded::default()));
    let job = PageJob {
        notification: "n".into(),
        page: 0,
        connections: members.clone(),
        payload: Bytes::from_static(b"{\"x\":1}"),
    };
    let event: aws_lambda_events::sqs::SqsEvent = serde_json::from_value(json!({
        "Records": [
            {"messageId": "good", "body": job.to_json()},
            {"messageId": "bad", "body": "{\"not\":\"a job\"}"},
        ]
    }))
    .unwrap();
    let answer = handlers::deliver(&services, &gateway, event).await;
    let failed: Vec<_> = answer
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["bad"]);
    assert_eq!(recording.posts().len(), 2);
    let got: Value = serde_json::from_slice(&recording.posts()[0].1).unwrap();
    assert_eq!(got, json!({"x": 1}));
    assert!(
        store.get(&members[2]).await.unwrap().is_none(),
        "a gone recipient is forgotten, not retried"
    );
}

#[tokio::test]
async fn sqs_takes_ten_jobs_per_batch_and_gives_each_back_as_it_was() {
    let moto = crate::testing::Server::dynamodb();
    let sdk = crate::aws::local_sdk_config(&moto.url());
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let url = crate::testing::sqs_queue(&sdk, "pages").await;
    let queue = SqsQueue::new(&sdk, &url);
    // Ten jobs of a full page and a 20 KiB notification: 210 KiB, under SQS's 256 KiB.
    let data = "x".repeat(20 * 1024);
    let payload = Bytes::from(json!({"type": "notification", "data": data}).to_string());
    let jobs: Vec<PageJob> = (0..10)
        .map(|page| PageJob {
            notification: "n".into(),
            page,
            connections: (0..MAX_PAGE)
                .map(|i| ConnectionId::new(format!("c{page}-{i}")))
                .collect(),
            payload: payload.clone(),
        })
        .collect();
    queue.enqueue(jobs.clone()).await.unwrap();
    let mut got = Vec::new();
    while got.len() < jobs.len() {
        let received = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        assert!(!received.messages().is_empty(), "all ten were queued");
        for message in received.messages() {
            got.push(PageJob::from_json(message.body().unwrap()).unwrap());
        }
    }
    got.sort_by_key(|job| job.page);
    assert_eq!(got, jobs);

    let nowhere = SqsQueue::new(&sdk, format!("{}/000000000000/missing", moto.url()));
    let err = nowhere.enqueue(jobs[..1].to_vec()).await.unwrap_err();
    assert!(matches!(err, QueueError::Unavailable(_)), "{err}");
}
