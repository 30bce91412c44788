// Numbered schema migrations, compiled in. Never edit a released migration: add a new one.
//
// Every table leads its primary key with `tenant` so a deployment can distribute the tables by
// tenant with Citus (create_distributed_table(..., 'tenant')) and every query stays on one shard.
#include "store_internal.hpp"

namespace yilian::gateway::detail {

const std::vector<migration>& migrations() {
  static const std::vector<migration> all = {
      {1, "resources, history, token index",
       R"sql(
CREATE TABLE resource_version (
  tenant       text        NOT NULL,
  res_type     text        NOT NULL,
  res_id       text        NOT NULL,
  version      bigint      NOT NULL,
  last_updated timestamptz NOT NULL,
  deleted      boolean     NOT NULL,
  method       text        NOT NULL,
  compartment  text,
  body         text        NOT NULL,  -- the JSON as served; '' for a deletion marker
  PRIMARY KEY (tenant, res_type, res_id, version)
);
CREATE INDEX resource_version_tenant_time ON resource_version (tenant, last_updated);
CREATE INDEX resource_version_type_time ON resource_version (tenant, res_type, last_updated);

CREATE TABLE resource_current (
  tenant       text        NOT NULL,
  res_type     text        NOT NULL,
  res_id       text        NOT NULL,
  version      bigint      NOT NULL,
  last_updated timestamptz NOT NULL,
  deleted      boolean     NOT NULL,
  compartment  text,
  body         text        NOT NULL,
  PRIMARY KEY (tenant, res_type, res_id)
);

CREATE TABLE index_token (
  tenant   text NOT NULL,
  res_type text NOT NULL,
  res_id   text NOT NULL,
  param    text NOT NULL,
  system   text NOT NULL,  -- '' = no system
  code     text NOT NULL
);
CREATE INDEX index_token_lookup ON index_token (tenant, res_type, param, code, system);
CREATE INDEX index_token_owner ON index_token (tenant, res_type, res_id);
)sql"},
      {2, "search index tables by parameter type",
       R"sql(
-- Search index rows: one table per search parameter type, each led by (tenant, res_type, res_id)
-- like the resources so Citus co-locates them with resource_current. `grp` numbers the items of a
-- composite parameter (rows of one composite item share a grp > 0; plain rows have grp 0).
ALTER TABLE index_token ADD COLUMN grp int NOT NULL DEFAULT 0;
ALTER TABLE index_token ADD COLUMN text_norm text NOT NULL DEFAULT '';  -- display/text for :text

CREATE TABLE index_string (
  tenant text NOT NULL, res_type text NOT NULL, res_id text NOT NULL, param text NOT NULL,
  grp int NOT NULL DEFAULT 0,
  norm  text NOT NULL,  -- lower case, accents removed: default (prefix) and :contains matches
  exact text NOT NULL   -- as written: :exact
);
CREATE INDEX index_string_lookup ON index_string (tenant, res_type, param, norm text_pattern_ops);
CREATE INDEX index_string_owner ON index_string (tenant, res_type, res_id);

CREATE TABLE index_reference (
  tenant text NOT NULL, res_type text NOT NULL, res_id text NOT NULL, param text NOT NULL,
  grp int NOT NULL DEFAULT 0,
  target_type text NOT NULL,  -- '' when the reference names no type (absolute URL elsewhere, canonical)
  target_id   text NOT NULL,  -- '' for a canonical/absolute reference
  url         text NOT NULL,  -- absolute or canonical URL without |version ('' for relative references)
  version     text NOT NULL   -- canonical |version or _history version ('' none)
);
CREATE INDEX index_reference_lookup ON index_reference (tenant, res_type, param, target_id, target_type);
CREATE INDEX index_reference_target ON index_reference (tenant, target_type, target_id, res_type, param);
CREATE INDEX index_reference_url ON index_reference (tenant, res_type, param, url) WHERE url <> '';
CREATE INDEX index_reference_owner ON index_reference (tenant, res_type, res_id);

CREATE TABLE index_date (
  tenant text NOT NULL, res_type text NOT NULL, res_id text NOT NULL, param text NOT NULL,
  grp int NOT NULL DEFAULT 0,
  low  timestamptz NOT NULL,  -- inclusive; '-infinity' for an open start
  high timestamptz NOT NULL   -- exclusive (value + its precision); 'infinity' for an open end
);
CREATE INDEX index_date_low ON index_date (tenant, res_type, param, low);
CREATE INDEX index_date_high ON index_date (tenant, res_type, param, high);
CREATE INDEX index_date_owner ON index_date (tenant, res_type, res_id);

CREATE TABLE index_number (
  tenant text NOT NULL, res_type text NOT NULL, res_id text NOT NULL, param text NOT NULL,
  grp int NOT NULL DEFAULT 0,
  value numeric NOT NULL
);
CREATE INDEX index_number_lookup ON index_number (tenant, res_type, param, value);
CREATE INDEX index_number_owner ON index_number (tenant, res_type, res_id);

CREATE TABLE index_quantity (
  tenant text NOT NULL, res_type text NOT NULL, res_id text NOT NULL, param text NOT NULL,
  grp int NOT NULL DEFAULT 0,
  value numeric NOT NULL,
  system text NOT NULL,          -- '' none
  code   text NOT NULL,          -- Quantity.code, else Quantity.unit
  canonical_value numeric,       -- UCUM canonical form when the unit converts (else NULL)
  canonical_code  text           -- canonical unit expression ("g.m-3"), NULL when not UCUM
);
CREATE INDEX index_quantity_lookup ON index_quantity (tenant, res_type, param, code, value);
CREATE INDEX index_quantity_canonical ON index_quantity (tenant, res_type, param, canonical_code, canonical_value)
  WHERE canonical_code IS NOT NULL;
CREATE INDEX index_quantity_owner ON index_quantity (tenant, res_type, res_id);

CREATE TABLE index_uri (
  tenant text NOT NULL, res_type text NOT NULL, res_id text NOT NULL, param text NOT NULL,
  grp int NOT NULL DEFAULT 0,
  uri text NOT NULL
);
CREATE INDEX index_uri_lookup ON index_uri (tenant, res_type, param, uri text_pattern_ops);
CREATE INDEX index_uri_owner ON index_uri (tenant, res_type, res_id);

-- _lastUpdated searches and sorts, and keyset paging on it.
CREATE INDEX resource_current_type_time ON resource_current (tenant, res_type, last_updated, res_id);
)sql"},
      {3, "subscriptions: registry, outbox of events, delivery state",
       R"sql(
-- One row per Subscription resource with a supported channel (rest-hook, websocket), kept in step
-- with the Subscription resources by a write participant. `criteria_type` + `criteria_query` are
-- the search that selects the resources whose changes are notified; the channel columns are what
-- the dispatcher needs without parsing the resource.
CREATE TABLE subscription (
  tenant         text    NOT NULL,
  sub_id         text    NOT NULL,
  criteria_type  text    NOT NULL,
  criteria_query text    NOT NULL,   -- query string after '?' ('' = every resource of the type)
  status         text    NOT NULL,   -- requested | active | error | off
  events_since_start bigint NOT NULL DEFAULT 0,  -- last event number handed out
  channel_type   text    NOT NULL,   -- rest-hook | websocket
  endpoint       text    NOT NULL DEFAULT '',
  payload_mime   text    NOT NULL DEFAULT '',  -- channel.payload ('' = none given)
  payload_content text   NOT NULL DEFAULT 'empty',  -- empty | id-only | full-resource
  headers        text    NOT NULL DEFAULT '',  -- channel.header values, one per line
  heartbeat_seconds int  NOT NULL DEFAULT 0,   -- 0 = no heartbeats
  topic          text    NOT NULL DEFAULT '',  -- reported as the status' topic ('' = the criteria)
  PRIMARY KEY (tenant, sub_id)
);
CREATE INDEX subscription_by_type ON subscription (tenant, criteria_type);

-- Resources that matched a subscription's criteria at their last change, so deleting one is
-- notified although its index rows are gone (only for subscriptions with a non-empty query).
CREATE TABLE subscription_member (
  tenant   text NOT NULL,
  sub_id   text NOT NULL,
  res_type text NOT NULL,
  res_id   text NOT NULL,
  PRIMARY KEY (tenant, sub_id, res_type, res_id)
);

-- The outbox: one row per (subscription, matching change), written in the change's transaction.
-- Event numbers are gap-free per subscription (taken from subscription.events_since_start under
-- its row lock, so they also follow commit order).
CREATE TABLE subscription_event (
  tenant       text        NOT NULL,
  sub_id       text        NOT NULL,
  event_number bigint      NOT NULL,
  res_type     text        NOT NULL,
  res_id       text        NOT NULL,
  version      bigint      NOT NULL,
  deleted      boolean     NOT NULL DEFAULT false,
  occurred_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant, sub_id, event_number)
);

-- Delivery progress per subscription, claimed by one gateway process at a time with a lease.
CREATE TABLE subscription_delivery (
  tenant            text        NOT NULL,
  sub_id            text        NOT NULL,
  delivered_through bigint      NOT NULL DEFAULT 0,  -- every event up to this number was delivered
  failures          int         NOT NULL DEFAULT 0,  -- consecutive failed attempts
  next_attempt_at   timestamptz NOT NULL DEFAULT now(),
  last_error        text,
  last_sent_at      timestamptz,                      -- last notification or heartbeat
  leased_by         text,
  leased_until      timestamptz,
  PRIMARY KEY (tenant, sub_id)
);
)sql"},
      {4, "bulk data export jobs and their NDJSON files",
       R"sql(
-- Asynchronous $export jobs: any gateway process may run a queued job (claimed with a lease) and
-- any may answer its status or serve its files, so the files live in the database too.
CREATE TABLE export_job (
  tenant           text        NOT NULL,
  job_id           text        NOT NULL,
  status           text        NOT NULL,  -- queued | running | completed | failed | cancelled
  request_url      text        NOT NULL,  -- the kick-off request, as the status report echoes it
  level            text        NOT NULL,  -- system | patient | group
  group_id         text,
  types            text[],                -- _type (NULL = all)
  since            timestamptz,           -- _since
  transaction_time timestamptz,           -- the snapshot the export reflects
  progress         text,
  error            text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  finished_at      timestamptz,
  expires_at       timestamptz,
  leased_by        text,
  leased_until     timestamptz,
  PRIMARY KEY (tenant, job_id)
);
CREATE INDEX export_job_queue ON export_job (status, created_at);

-- NDJSON output, split into files of bounded size (several files per type when large).
CREATE TABLE export_file (
  tenant     text   NOT NULL,
  job_id     text   NOT NULL,
  file_no    int    NOT NULL,
  res_type   text   NOT NULL,
  line_count bigint NOT NULL,
  body       text   NOT NULL,
  PRIMARY KEY (tenant, job_id, file_no)
);
)sql"},
      {5, "HL7 v2 message log: duplicates, dead letters, replay",
       R"sql(
-- Every HL7 v2 message an adapter received. An accepted message's row is written in the same
-- transaction as its resources, so a duplicate (same sender and MSH-10) finds it and gets the
-- original ACK without being applied twice. Messages answered AE/AR stay here as dead letters
-- (raw bytes as received, whatever the charset) to be listed and replayed after a fix.
CREATE TABLE hl7_message (
  tenant       text        NOT NULL,
  message_id   text        NOT NULL,        -- server id (dead-letter listing and replay)
  sender       text        NOT NULL,        -- MSH-3^MSH-4 ("" when unparseable)
  control_id   text        NOT NULL,        -- MSH-10
  message_type text        NOT NULL,        -- MSH-9 ("ORU^R01")
  status       text        NOT NULL,        -- accepted | error (AE) | rejected (AR) | replayed
  received_at  timestamptz NOT NULL DEFAULT now(),
  peer         text        NOT NULL DEFAULT '',
  raw          bytea       NOT NULL,
  ack          text        NOT NULL,        -- the ACK sent
  error        text,                        -- why AE/AR
  attempts     int         NOT NULL DEFAULT 1,
  PRIMARY KEY (tenant, message_id)
);
CREATE UNIQUE INDEX hl7_message_accepted ON hl7_message (tenant, sender, control_id) WHERE status = 'accepted';
CREATE INDEX hl7_message_status ON hl7_message (tenant, status, received_at);
)sql"},
  };
  return all;
}

}  // namespace yilian::gateway::detail
