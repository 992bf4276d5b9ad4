//! The AMQP topology on the real RabbitMQ the test command starts: a tenant's job reaches the
//! intake queue with the broker-checked tenant identity, a tenant cannot publish as another,
//! an unroutable job is returned instead of lost, a poison message is dead-lettered after
//! the delivery limit instead of looping, and a tenant can listen only to its own job events.

use fleet_queue::{self as amqp, AmqpError};
use fleet_tests_services::unique;
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::Channel;

fn admin_url() -> String {
    std::env::var("FLEET_AMQP_URL").expect("the test command starts the stack and exports FLEET_AMQP_URL")
}

/// The same broker, logged in as a tenant (`deploy/templates/definitions.json`).
fn tenant_url(tenant: &str) -> String {
    let url = admin_url();
    let host = url.split_once('@').map(|(_, h)| h).expect("url has credentials");
    format!("amqp://{tenant}:{tenant}-dev@{host}")
}

async fn admin_channel() -> Channel {
    let conn = amqp::connect(&admin_url()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    amqp::declare_topology(&channel).await.unwrap();
    // The connection must outlive the test; leak it rather than thread it through.
    Box::leak(Box::new(conn));
    channel
}

/// Takes messages from `queue` until one has `message_id`; returns its delivery.
async fn take(channel: &Channel, queue: &str, message_id: &str, tag: &str) -> lapin::message::Delivery {
    let mut consumer =
        channel.basic_consume(queue, tag, BasicConsumeOptions::default(), FieldTable::default()).await.unwrap();
    let wait = async {
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery.unwrap();
            if delivery.properties.message_id().as_ref().map(|m| m.as_str()) == Some(message_id) {
                return delivery;
            }
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        panic!("consumer ended");
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), wait).await.expect("message arrives")
}

#[tokio::test]
async fn jobs_carry_the_broker_checked_tenant_and_unroutable_ones_come_back() {
    let admin = admin_channel().await;
    admin.queue_purge(amqp::INTAKE_QUEUE, QueuePurgeOptions::default()).await.unwrap();

    // A tenant's job arrives with the identity the broker checked.
    let tenant = amqp::connect(&tenant_url("tenant-a")).await.unwrap();
    let ch = amqp::confirmed_channel(&tenant).await.unwrap();
    let id = unique("job");
    amqp::publish_confirmed(&ch, amqp::JOBS_EXCHANGE, amqp::SUBMIT_KEY, b"{}", amqp::job_properties("tenant-a", &id))
        .await
        .unwrap();
    let delivery = take(&admin, amqp::INTAKE_QUEUE, &id, "intake-1").await;
    assert_eq!(delivery.properties.user_id().as_ref().map(|u| u.as_str()), Some("tenant-a"));
    delivery.ack(BasicAckOptions::default()).await.unwrap();

    // A job with no queue behind its routing key comes back instead of vanishing.
    match amqp::publish_confirmed(
        &ch,
        amqp::JOBS_EXCHANGE,
        "no-such-route",
        b"{}",
        amqp::job_properties("tenant-a", &unique("lost")),
    )
    .await
    {
        Err(AmqpError::Unroutable { routing_key, .. }) => assert_eq!(routing_key, "no-such-route"),
        other => panic!("expected the message back, got {other:?}"),
    }

    // Posing as another tenant is refused by the broker itself.
    let spoof = amqp::confirmed_channel(&tenant).await.unwrap();
    let forged = amqp::publish_confirmed(
        &spoof,
        amqp::JOBS_EXCHANGE,
        amqp::SUBMIT_KEY,
        b"{}",
        amqp::job_properties("tenant-b", &unique("forged")),
    )
    .await;
    assert!(forged.is_err(), "publishing with another tenant's user_id must fail");
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_after_the_delivery_limit() {
    let admin = admin_channel().await;
    let conn = amqp::connect(&admin_url()).await.unwrap();
    let publisher = amqp::confirmed_channel(&conn).await.unwrap();
    let id = unique("poison");
    let props = lapin::BasicProperties::default().with_message_id(id.clone().into());
    amqp::publish_confirmed(&publisher, amqp::TASKS_EXCHANGE, "batch", b"poison", props).await.unwrap();
    let mut consumer = admin
        .basic_consume(amqp::BATCH_QUEUE, "poison-consumer", BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let mut rejections = 0;
    let redeliver = async {
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery.unwrap();
            if delivery.properties.message_id().as_ref().map(|m| m.as_str()) != Some(id.as_str()) {
                delivery.ack(BasicAckOptions::default()).await.unwrap();
                continue;
            }
            rejections += 1;
            delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.unwrap();
            if rejections > amqp::DELIVERY_LIMIT {
                break;
            }
        }
    };
    // A limit counted wrongly would leave the loop waiting for a delivery that never comes.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), redeliver).await;
    assert_eq!(
        rejections,
        amqp::DELIVERY_LIMIT + 1,
        "delivered once plus {} redeliveries, then no more",
        amqp::DELIVERY_LIMIT
    );
    // Task queues dead-letter to the scheduler's own queue, which reports the task's items failed.
    let dead = take(&admin, amqp::TASKS_DEAD_QUEUE, &id, "dead-consumer").await;
    assert_eq!(dead.data, b"poison");
    dead.ack(BasicAckOptions::default()).await.unwrap();
}

#[tokio::test]
async fn a_tenant_hears_its_own_job_events_and_cannot_bind_to_anothers() {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    let tenant = amqp::connect(&tenant_url("tenant-a")).await.unwrap();
    admin_channel().await;
    let declare = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let bind = |channel: Channel, queue: String, key: &'static str| async move {
        channel.queue_bind(&queue, amqp::EVENTS_EXCHANGE, key, QueueBindOptions::default(), FieldTable::default()).await
    };
    let own = tenant.create_channel().await.unwrap();
    let queue = unique("tenant-a.watch");
    own.queue_declare(&queue, declare, FieldTable::default()).await.unwrap();
    bind(own.clone(), queue.clone(), "job.tenant-a.#").await.expect("a tenant listens to its own jobs");
    let spy = tenant.create_channel().await.unwrap();
    let queue = unique("tenant-a.spy");
    spy.queue_declare(&queue, declare, FieldTable::default()).await.unwrap();
    let refused = bind(spy, queue, "job.tenant-b.#").await;
    assert!(refused.is_err(), "binding to another tenant's events must be refused");
    let wildcard = tenant.create_channel().await.unwrap();
    let queue = unique("tenant-a.all");
    wildcard.queue_declare(&queue, declare, FieldTable::default()).await.unwrap();
    assert!(bind(wildcard, queue, "#").await.is_err(), "a catch-all binding is refused too");
}

#[tokio::test]
async fn the_broker_refuses_a_message_over_its_size_limit_before_it_is_queued() {
    let tenant = amqp::connect(&tenant_url("tenant-a")).await.unwrap();
    let ch = amqp::confirmed_channel(&tenant).await.unwrap();
    // Over `max_message_size` (4 MiB): the broker closes the channel on the publish, so the
    // body never waits in the intake queue for the scheduler to refuse it.
    let body = vec![b' '; 5 << 20];
    let id = unique("huge");
    let sent = amqp::publish_confirmed(
        &ch,
        amqp::JOBS_EXCHANGE,
        amqp::SUBMIT_KEY,
        &body,
        amqp::job_properties("tenant-a", &id),
    )
    .await;
    let error = sent.expect_err("a 5 MiB message is refused").to_string();
    assert!(error.contains("max size"), "{error}");
    // The tenant's connection goes on: a normal message on a new channel passes.
    let ch = amqp::confirmed_channel(&tenant).await.unwrap();
    let id = unique("small");
    amqp::publish_confirmed(&ch, amqp::JOBS_EXCHANGE, amqp::SUBMIT_KEY, b"{}", amqp::job_properties("tenant-a", &id))
        .await
        .expect("a small message passes");
}
