//! The S3 backend (aws-sdk-s3), for any S3-compatible server: path-style addressing,
//! a fixed endpoint and static credentials, as Garage and MinIO need; AWS works the same.

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;

use super::{ListPage, ObjectStore, StoreError};
use fleet_protocol::keys::check_key;
use tracing::Instrument;

/// Where the bucket is and how to sign requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:3900`.
    pub endpoint: String,
    /// Signing region (`garage` for Garage).
    pub region: String,
    /// Bucket holding every tenant's prefix and the model registry.
    pub bucket: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
}

impl S3Config {
    /// Reads `FLEET_S3_ENDPOINT`, `FLEET_S3_REGION`, `FLEET_S3_BUCKET`, `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (what `deploy/stack.sh env` prints); names the first one missing.
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set (see deploy/stack.sh env)"));
        Ok(S3Config {
            endpoint: var("FLEET_S3_ENDPOINT")?,
            region: var("FLEET_S3_REGION")?,
            bucket: var("FLEET_S3_BUCKET")?,
            access_key: var("AWS_ACCESS_KEY_ID")?,
            secret_key: var("AWS_SECRET_ACCESS_KEY")?,
        })
    }
}

/// A bucket on an S3-compatible server.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
}

impl S3Store {
    /// A client for `cfg`; no request is made until the first call.
    pub fn new(cfg: &S3Config) -> Self {
        let credentials = Credentials::new(&cfg.access_key, &cfg.secret_key, None, None, "fleet-config");
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .endpoint_url(&cfg.endpoint)
            .credentials_provider(credentials)
            .force_path_style(true)
            // S3-compatible servers differ in which checksum headers they know.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        S3Store { client: Client::from_conf(conf), bucket: cfg.bucket.clone() }
    }
}

/// Object metadata naming the attempt that wrote an output: `<task id> <lease token>`.
pub const WRITTEN_BY: &str = "fleet-lease";

impl S3Store {
    /// Writes (or replaces) the object like [`ObjectStore::put`], marked with the attempt that
    /// wrote it (`x-amz-meta-fleet-lease: <task id> <token>`): an operator reading an output
    /// sees which lease wrote it, and the chaos suite tells a stale attempt's write.
    pub async fn put_written_by(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
        lease: &str,
    ) -> Result<(), StoreError> {
        self.put_object(key, bytes, content_type, Some(lease)).await
    }

    /// One PUT, with the lease that wrote it as metadata when there is one.
    async fn put_object(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
        lease: Option<&str>,
    ) -> Result<(), StoreError> {
        check_key(key)?;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(bytes));
        if let Some(lease) = lease {
            request = request.metadata(WRITTEN_BY, lease);
        }
        let span = tracing::info_span!("S3.PutObject", "rpc.system" = "aws-api", "rpc.service" = "S3",
            "rpc.method" = "PutObject", "aws.s3.bucket" = %self.bucket, "aws.s3.key" = key);
        request.send().instrument(span).await.map_err(|e| backend("put", key, e))?;
        Ok(())
    }

    /// A URL that lets whoever holds it GET `key` until `expires` has passed, signed with this
    /// store's credentials; nothing else can be read with it.
    pub async fn presign_get(&self, key: &str, expires: std::time::Duration) -> Result<String, StoreError> {
        check_key(key)?;
        let config = presigning(key, expires)?;
        let request = self.client.get_object().bucket(&self.bucket).key(key).presigned(config).await;
        Ok(request.map_err(|e| backend("presign get", key, e))?.uri().to_string())
    }

    /// A URL that lets whoever holds it PUT exactly `key` (with `content_type`) until
    /// `expires` has passed: the key and the content type are in the signature, so another key
    /// or type is refused by the server.
    pub async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        expires: std::time::Duration,
    ) -> Result<String, StoreError> {
        check_key(key)?;
        let config = presigning(key, expires)?;
        let request = self.client.put_object().bucket(&self.bucket).key(key).content_type(content_type);
        let request = request.presigned(config).await.map_err(|e| backend("presign put", key, e))?;
        Ok(request.uri().to_string())
    }
}

/// The presigning settings for `expires` (S3 allows at most seven days).
fn presigning(key: &str, expires: std::time::Duration) -> Result<aws_sdk_s3::presigning::PresigningConfig, StoreError> {
    aws_sdk_s3::presigning::PresigningConfig::expires_in(expires).map_err(|e| StoreError::Backend {
        op: "presign",
        key: key.to_string(),
        reason: e.to_string(),
        retryable: false,
    })
}

/// Maps an SDK error, deciding whether it is worth retrying.
fn backend<E: ProvideErrorMetadata, R>(op: &'static str, key: &str, err: SdkError<E, R>) -> StoreError
where
    SdkError<E, R>: std::error::Error,
{
    let retryable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(e) => {
            matches!(e.err().code(), Some("SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout"))
        }
        _ => false,
    };
    let reason = match err.as_service_error() {
        Some(e) => format!("{}: {}", e.code().unwrap_or("error"), e.message().unwrap_or("")),
        None => format!("{}", aws_smithy_types::error::display::DisplayErrorContext(&err)),
    };
    StoreError::Backend { op, key: key.to_string(), reason, retryable }
}

/// The bytes of a get's response body; a body cut off midway is worth retrying.
async fn read_body(key: &str, out: aws_sdk_s3::operation::get_object::GetObjectOutput) -> Result<Vec<u8>, StoreError> {
    let body = out.body.collect().await.map_err(|e| StoreError::Backend {
        op: "get",
        key: key.to_string(),
        reason: e.to_string(),
        retryable: true,
    })?;
    Ok(body.into_bytes().to_vec())
}

/// The span of one GetObject, named and labelled as OpenTelemetry's semantic conventions for
/// AWS S3 say.
fn get_span(bucket: &str, key: &str) -> tracing::Span {
    tracing::info_span!(
        "S3.GetObject",
        "rpc.system" = "aws-api",
        "rpc.service" = "S3",
        "rpc.method" = "GetObject",
        "aws.s3.bucket" = bucket,
        "aws.s3.key" = key
    )
}

impl ObjectStore for S3Store {
    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        check_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .instrument(get_span(&self.bucket, key))
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    StoreError::NotFound { key: key.to_string() }
                } else {
                    backend("get", key, e)
                }
            })?;
        read_body(key, out).await
    }

    async fn get_capped(&self, key: &str, max: u64) -> Result<Vec<u8>, StoreError> {
        check_key(key)?;
        let span = get_span(&self.bucket, key);
        let mut out =
            self.client.get_object().bucket(&self.bucket).key(key).send().instrument(span.clone()).await.map_err(
                |e| {
                    if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                        StoreError::NotFound { key: key.to_string() }
                    } else {
                        backend("get", key, e)
                    }
                },
            )?;
        let too_large = |size: u64| StoreError::TooLarge { key: key.to_string(), size, max };
        // Refused on the declared length before any of the body is read; dropping the body
        // closes the connection.
        let declared = out.content_length().unwrap_or(0).max(0) as u64;
        if declared > max {
            return Err(too_large(declared));
        }
        // And counted as it arrives, whatever the header said.
        let mut bytes = Vec::with_capacity(declared as usize);
        while let Some(chunk) = out.body.next().instrument(span.clone()).await {
            let chunk = chunk.map_err(|e| StoreError::Backend {
                op: "get",
                key: key.to_string(),
                reason: e.to_string(),
                retryable: true,
            })?;
            if (bytes.len() + chunk.len()) as u64 > max {
                return Err(too_large((bytes.len() + chunk.len()) as u64));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        check_key(key)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let range = format!("bytes={start}-{}", start + len - 1);
        let request = self.client.get_object().bucket(&self.bucket).key(key).range(range);
        let out = match request.send().await {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(StoreError::NotFound { key: key.to_string() })
            }
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => return Ok(Vec::new()),
            Err(e) => return Err(backend("get", key, e)),
        };
        read_body(key, out).await
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<(), StoreError> {
        self.put_object(key, bytes, content_type, None).await
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(backend("head", key, e)),
        }
    }

    async fn list_page(&self, prefix: &str, token: Option<String>, limit: usize) -> Result<ListPage, StoreError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(limit.clamp(1, 1000) as i32)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| backend("list", prefix, e))?;
        let keys = out.contents().iter().filter_map(|o| o.key().map(str::to_string)).collect();
        let next =
            if out.is_truncated().unwrap_or(false) { out.next_continuation_token().map(str::to_string) } else { None };
        Ok(ListPage { keys, next })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| backend("delete", key, e))?;
        Ok(())
    }
}
