//! Maintenance (Status, Alarm, HashKV, Defragment) and Cluster (MemberList): what etcdctl's
//! `endpoint status`, `endpoint hashkv`, `alarm list`, `defrag` and `member list` need, and the
//! version kube-apiserver checks before it sends watch progress requests.

use tonic::{Request, Response, Status};

use super::{Door, REPORTED_VERSION};
use crate::proto::etcd::etcdserverpb as pb;

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not served by Coffer's etcd door"))
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for Door {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let (call, _) = self.admit(request, "etcd.Alarm")?;
        // No alarm is ever raised: quotas and storage failures have their own errors.
        let response = pb::AlarmResponse {
            header: Some(self.header(self.store.revision())),
            alarms: Vec::new(),
        };
        self.finish(&call, Ok(response), |_| 0)
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let (call, _) = self.admit(request, "etcd.Status")?;
        let revision = self.store.revision();
        let db_size = self.store.size_on_disk() as i64;
        let response = pb::StatusResponse {
            header: Some(self.header(revision)),
            version: REPORTED_VERSION.to_owned(),
            db_size,
            leader: self.member_id,
            raft_index: revision,
            raft_term: 1,
            raft_applied_index: revision,
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: false,
            storage_version: String::new(),
            db_size_quota: 0,
            downgrade_info: None,
        };
        self.finish(&call, Ok(response), |_| 0)
    }

    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        let (call, _) = self.admit(request, "etcd.Defragment")?;
        // Nothing to do: compaction already removes what it frees.
        let response = pb::DefragmentResponse {
            header: Some(self.header(self.store.revision())),
        };
        self.finish(&call, Ok(response), |_| 0)
    }

    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        Err(unimplemented("Hash"))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let (call, r) = self.admit(request, "etcd.HashKV")?;
        let result = async {
            // A CRC-32 over every key's (key, create and mod revision, version, lease) at the
            // revision: equal on two stores with the same history, cheap (no value is
            // decrypted), and not etcd's bytes (etcd hashes its own storage format).
            let revision = match r.revision {
                rev if rev <= 0 => self.store.revision(),
                rev => rev as u64,
            };
            let mut hasher = crc32fast::Hasher::new();
            let all = coffer_core::store::raw::KeyRange::From(Vec::new());
            self.store
                .raw_scan(&all, Some(revision), |v| {
                    hasher.update(&v.key);
                    hasher.update(&v.create_revision.to_be_bytes());
                    hasher.update(&v.mod_revision.to_be_bytes());
                    hasher.update(&v.version.to_be_bytes());
                    hasher.update(&v.lease.to_be_bytes());
                    true
                })
                .await
                .map_err(|e| crate::server::status::etcd_store_error(&e))?;
            Ok(pb::HashKvResponse {
                header: Some(self.header(self.store.revision())),
                hash: hasher.finalize(),
                compact_revision: self.store.compact_revision() as i64,
                hash_revision: revision as i64,
            })
        }
        .await;
        self.finish(&call, result, |_| 0)
    }

    type SnapshotStream = futures::stream::Empty<Result<pb::SnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        // A snapshot would be every value in clear: back up the data directory instead.
        Err(unimplemented("Snapshot"))
    }

    async fn move_leader(
        &self,
        _request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        Err(unimplemented("MoveLeader"))
    }

    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(unimplemented("Downgrade"))
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Door {
    async fn member_add(
        &self,
        _request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(unimplemented("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(unimplemented("MemberRemove"))
    }

    async fn member_update(
        &self,
        _request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(unimplemented("MemberUpdate"))
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let (call, _) = self.admit(request, "etcd.MemberList")?;
        let response = pb::MemberListResponse {
            header: Some(self.header(self.store.revision())),
            members: vec![pb::Member {
                id: self.member_id,
                name: "coffer".to_owned(),
                peer_ur_ls: Vec::new(),
                client_ur_ls: self.client_urls.clone(),
                is_learner: false,
            }],
        };
        self.finish(&call, Ok(response), |_| 0)
    }

    async fn member_promote(
        &self,
        _request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(unimplemented("MemberPromote"))
    }
}
