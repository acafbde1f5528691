//! The backend conformance suite (`baton::store::conformance`) against real servers: S3
//! (moto) and a Pelican federation (fixtures/pelican_federation.py). Memory and directory
//! run the same suite as unit tests inside the crate.
//!
//! Each backend is built in this process with its settings given in code
//! (`S3Backend::with_settings`, `PelicanBackend::with_ca_file` and an explicit token file),
//! not through `AWS_*`, `SSL_CERT_FILE` or token variables: tests run on parallel threads
//! of one process, each with its own server and CA, and one process-wide environment can
//! describe only one of them (and changing it while other threads read it is a race).

use crate::common::pelican::Federation;
use crate::common::*;

use baton::store::conformance::{self, Capabilities};
use baton::store::{Backend, PelicanBackend, S3Backend, S3Settings, StoreUrl};
use std::sync::Arc;

fn s3(moto: &Moto, bucket: &str, prefix: &str) -> Arc<dyn Backend> {
    let settings = S3Settings {
        endpoint: moto.endpoint(),
        region: "us-east-1".into(),
        access_key_id: "conformance".into(),
        secret_access_key: "conformance".into(),
    };
    Arc::new(S3Backend::with_settings(bucket, prefix, &settings).unwrap())
}

#[tokio::test]
async fn s3_meets_the_backend_contract_under_a_prefix_and_at_the_bucket_root() {
    let moto = Moto::start();
    moto.create_bucket("prefixed");
    moto.create_bucket("bare");
    conformance::all(s3(&moto, "prefixed", "team/ckpt"), Capabilities::FULL).await.unwrap();
    conformance::all(s3(&moto, "bare", ""), Capabilities::FULL).await.unwrap();
}

fn pelican(fed: &Federation, prefix: &str, scope: &str) -> Arc<dyn Backend> {
    let StoreUrl::Pelican(url) = StoreUrl::parse(&fed.store_url(prefix)).unwrap() else { panic!("not a Pelican URL") };
    Arc::new(PelicanBackend::with_ca_file(&url, Some(fed.token_file(scope, 3600)), &fed.ca).unwrap())
}

#[tokio::test]
async fn pelican_meets_the_backend_contract_write_once() {
    let fed = Federation::start();
    let backend = pelican(&fed, "conformance", "storage.read:/ storage.create:/ storage.modify:/");
    if let Err(e) = conformance::all(backend, Capabilities::WRITE_ONCE).await {
        panic!("{e:#}\n--- the federation's log ---\n{}", fed.server_log());
    }
}

/// A token without storage.modify cannot delete: `delete` must say so, not pretend.
#[tokio::test]
async fn pelican_without_storage_modify_refuses_deletes_and_keeps_the_objects() {
    let fed = Federation::start();
    let backend = pelican(&fed, "read-create", "storage.read:/ storage.create:/");
    let caps = Capabilities { overwrite: false, delete: false };
    if let Err(e) = conformance::all(backend, caps).await {
        panic!("{e:#}\n--- the federation's log ---\n{}", fed.server_log());
    }
}
