//! Least privilege, on the real services started by the test command: each service's own
//! Redis user, object-store key and broker user can do what the service needs and no more.

use fleet_store::s3::{S3Config, S3Store};
use fleet_store::{ObjectStore, StoreError};
use fleet_tests_services::unique;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} unset: the test command starts the stack and exports it"))
}

async fn redis_as(service: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(env(&format!("FLEET_{service}_REDIS_URL"))).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

fn refused<T: std::fmt::Debug>(result: redis::RedisResult<T>, what: &str) {
    let e = result.expect_err(what);
    assert!(e.to_string().contains("NOPERM"), "{what}: {e}");
}

#[tokio::test]
async fn each_redis_user_reaches_only_its_keys() {
    let id = unique("cred");
    let mut worker = redis_as("WORKER").await;
    refused(
        redis::cmd("GET").arg(format!("fleet:api:token:{id}")).query_async::<Option<String>>(&mut worker).await,
        "worker reads a token",
    );
    refused(
        redis::cmd("SET").arg(format!("fleet:job:t:{id}")).arg("x").query_async::<()>(&mut worker).await,
        "worker writes a job",
    );
    let hb: Option<String> =
        redis::cmd("GET").arg(format!("fleet:worker:{id}")).query_async(&mut worker).await.unwrap();
    assert_eq!(hb, None, "a worker reads heartbeats");
    let _: () = redis::cmd("SET")
        .arg(format!("fleet:worker:{id}"))
        .arg("{}")
        .arg("PX")
        .arg(1000)
        .query_async(&mut worker)
        .await
        .unwrap();

    let mut api = redis_as("API").await;
    refused(
        redis::cmd("SET").arg(format!("fleet:job:t:{id}")).arg("x").query_async::<()>(&mut api).await,
        "api writes a job",
    );
    refused(
        redis::cmd("GET").arg(format!("fleet:lease:{id}")).query_async::<Option<String>>(&mut api).await,
        "api reads a lease",
    );
    let _: () = redis::cmd("HSET")
        .arg(format!("fleet:api:token:{id}"))
        .arg("name")
        .arg("x")
        .query_async(&mut api)
        .await
        .unwrap();
    let job: Option<String> = redis::cmd("GET").arg(format!("fleet:job:t:{id}")).query_async(&mut api).await.unwrap();
    assert_eq!(job, None);

    let mut scheduler = redis_as("SCHEDULER").await;
    refused(redis::cmd("FLUSHALL").query_async::<()>(&mut scheduler).await, "scheduler flushes");
    refused(
        redis::cmd("SET").arg(format!("other:{id}")).arg("x").query_async::<()>(&mut scheduler).await,
        "scheduler outside fleet:*",
    );
    let _: () = redis::cmd("SET")
        .arg(format!("fleet:job:t:{id}"))
        .arg("x")
        .arg("PX")
        .arg(1000)
        .query_async(&mut scheduler)
        .await
        .unwrap();

    // No credentials: nothing at all.
    let url = env("FLEET_REDIS_URL");
    let anonymous = format!("redis://{}", url.rsplit_once('@').map_or(url.as_str(), |(_, host)| host));
    let mut conn = redis::Client::open(anonymous).unwrap().get_multiplexed_async_connection().await.unwrap();
    let e = redis::cmd("GET").arg("fleet:anything").query_async::<Option<String>>(&mut conn).await.unwrap_err();
    assert!(e.to_string().contains("NOAUTH") || e.to_string().contains("NOPERM"), "{e}");
}

fn s3_as(service: &str) -> S3Store {
    let mut config = S3Config::from_env().unwrap();
    config.access_key = env(&format!("FLEET_{service}_S3_KEY"));
    config.secret_key = env(&format!("FLEET_{service}_S3_SECRET"));
    S3Store::new(&config)
}

#[tokio::test]
async fn the_schedulers_key_reads_and_cannot_write() {
    let key = format!("tenant-a/{}/x.txt", unique("cred"));
    let admin = S3Store::new(&S3Config::from_env().unwrap());
    admin.put(&key, b"hello".to_vec(), "text/plain").await.unwrap();
    let scheduler = s3_as("SCHEDULER");
    assert_eq!(scheduler.get(&key).await.unwrap(), b"hello");
    match scheduler.put(&format!("{key}.2"), b"x".to_vec(), "text/plain").await {
        Err(StoreError::Backend { reason, retryable: false, .. }) => {
            assert!(reason.contains("AccessDenied"), "{reason}")
        }
        other => panic!("the scheduler's key wrote: {other:?}"),
    }
    let worker = s3_as("WORKER");
    worker.put(&format!("{key}.3"), b"x".to_vec(), "text/plain").await.unwrap();
    assert!(admin.exists(&format!("{key}.3")).await.unwrap());
}

#[tokio::test]
async fn a_workers_broker_user_cannot_submit_or_touch_fleet_queues() {
    let connection = fleet_queue::connect(&env("FLEET_WORKER_AMQP_URL")).await.unwrap();
    // Its own queue: yes.
    let channel = connection.create_channel().await.unwrap();
    fleet_queue::declare_worker_queue(&channel, &unique("w")).await.unwrap();
    // Submitting a job: no.
    let channel = connection.create_channel().await.unwrap();
    let publish = channel
        .basic_publish(
            fleet_queue::JOBS_EXCHANGE,
            fleet_queue::SUBMIT_KEY,
            lapin::options::BasicPublishOptions::default(),
            b"{}",
            lapin::BasicProperties::default(),
        )
        .await;
    // The broker refuses by closing the channel; what the caller sees first depends on timing
    // (the refusal itself, or the channel already closing), so the channel's end is the check.
    let refused = match publish {
        Err(e) => e.to_string(),
        Ok(confirm) => match confirm.await {
            Err(e) => e.to_string(),
            Ok(_) => match channel.basic_qos(1, Default::default()).await {
                Err(e) => e.to_string(),
                Ok(()) => String::from("accepted"),
            },
        },
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!channel.status().connected(), "a worker published to {}: {refused}", fleet_queue::JOBS_EXCHANGE);
    assert!(refused.contains("ACCESS_REFUSED") || refused.contains("Clos"), "{refused}");
    // Reading the intake queue: no.
    let channel = connection.create_channel().await.unwrap();
    let consume = channel.basic_consume(fleet_queue::INTAKE_QUEUE, "x", Default::default(), Default::default()).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(consume.is_err() && !channel.status().connected(), "a worker consumes intake: {consume:?}");
}
