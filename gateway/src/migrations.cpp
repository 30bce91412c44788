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
  };
  return all;
}

}  // namespace yilian::gateway::detail
