//! What the wiping codec zeroizes in the etcd door's messages: values (and previous values) in
//! responses, values in put requests. Every other message carries no value.

use coffer_kms::codec::Wipe;
use zeroize::Zeroize;

use super::etcd::etcdserverpb as pb;
use super::etcd::mvccpb;

impl Wipe for mvccpb::KeyValue {
    fn wipe(&mut self) {
        self.value.zeroize();
    }
}

impl Wipe for mvccpb::Event {
    fn wipe(&mut self) {
        self.kv.wipe();
        self.prev_kv.wipe();
    }
}

impl Wipe for pb::RangeResponse {
    fn wipe(&mut self) {
        self.kvs.iter_mut().for_each(Wipe::wipe);
    }
}

impl Wipe for pb::RangeStreamResponse {
    fn wipe(&mut self) {
        self.range_response.wipe();
    }
}

impl Wipe for pb::PutRequest {
    fn wipe(&mut self) {
        self.value.zeroize();
    }
}

impl Wipe for pb::PutResponse {
    fn wipe(&mut self) {
        self.prev_kv.wipe();
    }
}

impl Wipe for pb::DeleteRangeResponse {
    fn wipe(&mut self) {
        self.prev_kvs.iter_mut().for_each(Wipe::wipe);
    }
}

impl Wipe for pb::RequestOp {
    fn wipe(&mut self) {
        use pb::request_op::Request;
        match &mut self.request {
            Some(Request::RequestPut(p)) => p.wipe(),
            Some(Request::RequestTxn(t)) => t.wipe(),
            _ => {}
        }
    }
}

impl Wipe for pb::TxnRequest {
    fn wipe(&mut self) {
        self.success.iter_mut().for_each(Wipe::wipe);
        self.failure.iter_mut().for_each(Wipe::wipe);
        for c in &mut self.compare {
            if let Some(pb::compare::TargetUnion::Value(v)) = &mut c.target_union {
                v.zeroize();
            }
        }
    }
}

impl Wipe for pb::ResponseOp {
    fn wipe(&mut self) {
        use pb::response_op::Response;
        match &mut self.response {
            Some(Response::ResponseRange(r)) => r.wipe(),
            Some(Response::ResponsePut(p)) => p.wipe(),
            Some(Response::ResponseDeleteRange(d)) => d.wipe(),
            Some(Response::ResponseTxn(t)) => t.wipe(),
            None => {}
        }
    }
}

impl Wipe for pb::TxnResponse {
    fn wipe(&mut self) {
        self.responses.iter_mut().for_each(Wipe::wipe);
    }
}

impl Wipe for pb::WatchResponse {
    fn wipe(&mut self) {
        self.events.iter_mut().for_each(Wipe::wipe);
    }
}

impl Wipe for pb::SnapshotResponse {
    fn wipe(&mut self) {
        self.blob.zeroize();
    }
}

/// Messages without values.
macro_rules! no_plaintext {
    ($($t:ident),* $(,)?) => { $(impl Wipe for pb::$t {})* };
}

no_plaintext!(
    RangeRequest,
    DeleteRangeRequest,
    CompactionRequest,
    CompactionResponse,
    HashRequest,
    HashKvRequest,
    HashKvResponse,
    HashResponse,
    SnapshotRequest,
    WatchRequest,
    WatchCreateRequest,
    WatchCancelRequest,
    WatchProgressRequest,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseRevokeRequest,
    LeaseRevokeResponse,
    LeaseCheckpointRequest,
    LeaseCheckpointResponse,
    LeaseKeepAliveRequest,
    LeaseKeepAliveResponse,
    LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
    LeaseLeasesRequest,
    LeaseLeasesResponse,
    MemberAddRequest,
    MemberAddResponse,
    MemberRemoveRequest,
    MemberRemoveResponse,
    MemberUpdateRequest,
    MemberUpdateResponse,
    MemberListRequest,
    MemberListResponse,
    MemberPromoteRequest,
    MemberPromoteResponse,
    DefragmentRequest,
    DefragmentResponse,
    MoveLeaderRequest,
    MoveLeaderResponse,
    AlarmRequest,
    AlarmResponse,
    DowngradeRequest,
    DowngradeResponse,
    DowngradeVersionTestRequest,
    StatusRequest,
    StatusResponse,
    AuthEnableRequest,
    AuthDisableRequest,
    AuthStatusRequest,
    AuthenticateRequest,
    AuthUserAddRequest,
    AuthUserGetRequest,
    AuthUserDeleteRequest,
    AuthUserChangePasswordRequest,
    AuthUserGrantRoleRequest,
    AuthUserRevokeRoleRequest,
    AuthRoleAddRequest,
    AuthRoleGetRequest,
    AuthUserListRequest,
    AuthRoleListRequest,
    AuthRoleDeleteRequest,
    AuthRoleGrantPermissionRequest,
    AuthRoleRevokePermissionRequest,
    AuthEnableResponse,
    AuthDisableResponse,
    AuthStatusResponse,
    AuthenticateResponse,
    AuthUserAddResponse,
    AuthUserGetResponse,
    AuthUserDeleteResponse,
    AuthUserChangePasswordResponse,
    AuthUserGrantRoleResponse,
    AuthUserRevokeRoleResponse,
    AuthRoleAddResponse,
    AuthRoleGetResponse,
    AuthRoleListResponse,
    AuthUserListResponse,
    AuthRoleDeleteResponse,
    AuthRoleGrantPermissionResponse,
    AuthRoleRevokePermissionResponse
);
