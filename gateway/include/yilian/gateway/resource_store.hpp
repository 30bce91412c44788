// PostgreSQL storage of FHIR resources: current version, full history, and search-index rows,
// written in one transaction per interaction. A read returns the stored JSON bytes as they are
// served (meta.versionId and meta.lastUpdated already inside), with no parse.
//
// Every table carries `tenant` (the partition/distribution key: a deployment may shard on it with
// Citus; reads always filter on it) and patient-data tables carry the patient `compartment`.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "yilian/fhir/value.hpp"

#include <pqxx/types.hxx>  // forward declarations only (libpqxx 6.4)

namespace yilian::gateway {

class store_transaction;  // one PostgreSQL transaction shared by several interactions

// Who is asking, for partitioning and audit. Filled from the request (later: from the token).
struct request_context {
  std::string tenant = "default";
  std::string correlation_id;
  // Set while a transaction Bundle is processed: every read and write made with this context
  // joins that one PostgreSQL transaction (see resource_store::begin).
  store_transaction* transaction = nullptr;
};

struct stored_resource {
  std::string type;
  std::string id;
  std::int64_t version = 0;
  std::string last_updated;  // FHIR instant, e.g. "2026-11-23T20:44:41.123+00:00"
  bool deleted = false;
  std::string json;          // the stored bytes (empty for a deletion marker)
  std::string method;        // history entry request method: POST, PUT, DELETE, PATCH
};

// Failures that map to an HTTP status; anything else thrown by the store is a 500.
enum class store_error_kind {
  not_found,            // 404
  gone,                 // 410 (deleted)
  version_conflict,     // 412 If-Match mismatch / 409 on concurrent create
  multiple_matches,     // 412 conditional update/delete/create matched more than one
  invalid_criteria,     // 400 conditional criteria not understood
  schema_too_new,       // refuse to start
};

class store_error : public std::runtime_error {
 public:
  store_error(store_error_kind kind, const std::string& what) : std::runtime_error(what), kind_(kind) {}
  store_error_kind kind() const noexcept { return kind_; }

 private:
  store_error_kind kind_;
};

// A search criterion for conditional interactions ("identifier=http://x|123", "_id=5").
struct criterion {
  std::string name;   // parameter name without modifiers
  std::string value;  // raw value, as in the query string (decoded)
};

// Observes each committed write and takes part in its transaction: search indexes, the
// subscription outbox and audit later hook in here.
struct write_event {
  const request_context* context = nullptr;
  const stored_resource* resource = nullptr;  // the new version (deleted = true for DELETE)
  const fhir::value* content = nullptr;       // parsed content (null for DELETE)
  std::string compartment;                    // patient id the resource belongs to, if any
};

class write_participant {
 public:
  virtual ~write_participant() = default;
  // Inside the write's transaction: add rows that must commit with it (index rows, outbox).
  virtual void in_transaction(pqxx::transaction_base& tx, const write_event& event) = 0;
  // The same for several writes at once (bulk loads, transaction Bundles); override it to write
  // the rows of all of them in a few statements. Events are in write order.
  virtual void in_transaction_batch(pqxx::transaction_base& tx, const std::vector<write_event>& events) {
    for (const auto& e : events) in_transaction(tx, e);
  }
  // After the commit succeeded (notify, metrics). Must not throw.
  virtual void after_commit(const write_event&) noexcept {}
};

struct history_query {
  std::optional<std::string> type;  // empty = system history
  std::optional<std::string> id;    // instance history
  std::optional<std::string> since; // FHIR instant/dateTime: only versions at or after
  std::size_t count = 50;
  std::size_t offset = 0;
};

struct history_page {
  std::vector<stored_resource> entries;  // newest first
  std::int64_t total = 0;
};

// One resource of a bulk write (put_all): stored under its own id, created or updated.
struct batch_item {
  std::string type;
  std::string id;
  fhir::value resource;
};

struct write_result {
  stored_resource resource;
  bool created = false;   // 201 vs 200
  bool unchanged = false; // conditional create matched an existing resource (nothing written)
};

// A new random resource id (UUID v4 text), as the store assigns on create.
std::string new_resource_id();

// A transaction in progress (opaque; see resource_store::begin).
class store_transaction {
 public:
  ~store_transaction();
  store_transaction(const store_transaction&) = delete;
  store_transaction& operator=(const store_transaction&) = delete;

  struct state;  // defined by the store
  explicit store_transaction(std::unique_ptr<state> s);
  state* get() const noexcept { return state_.get(); }

 private:
  std::unique_ptr<state> state_;
};

class resource_store {
 public:
  // Opens `connections` connections (one per worker thread) to `database_url`. Without
  // `search_indexing` no search index rows are written (benchmarks measure the indexing cost so).
  resource_store(std::string database_url, unsigned connections, bool search_indexing = true);
  ~resource_store();

  // Applies pending numbered migrations; throws store_error(schema_too_new) when the database
  // has a newer schema than this binary knows.
  void migrate();
  static int schema_version() noexcept;  // the newest migration this binary has

  void add_participant(std::shared_ptr<write_participant> participant);

  std::optional<stored_resource> read(const request_context& ctx, std::string_view type, std::string_view id);
  std::optional<stored_resource> vread(const request_context& ctx, std::string_view type, std::string_view id,
                                       std::int64_t version);

  // `resource` is validated content; the store assigns id (when `id` is empty), meta.versionId
  // and meta.lastUpdated, and serialises it. `if_none_exist` makes the create conditional:
  // exactly one resource is created for concurrent requests with the same criteria.
  write_result create(const request_context& ctx, std::string_view type, fhir::value resource,
                      const std::vector<criterion>* if_none_exist = nullptr);
  // Update or create-on-update with a client id. `if_match` = expected current version.
  write_result update(const request_context& ctx, std::string_view type, std::string_view id, fhir::value resource,
                      std::optional<std::int64_t> if_match = std::nullopt, std::string_view method = "PUT");
  // Conditional update: no match creates (server id unless the body has one), one match updates,
  // several matches throw multiple_matches.
  write_result conditional_update(const request_context& ctx, std::string_view type,
                                  const std::vector<criterion>& criteria, fhir::value resource);
  // Returns the deletion marker version, or nullopt when there was nothing to delete.
  std::optional<stored_resource> remove(const request_context& ctx, std::string_view type, std::string_view id,
                                        std::optional<std::int64_t> if_match = std::nullopt);
  // Conditional delete: deletes every match when `allow_multiple`, otherwise 412 on several.
  std::vector<stored_resource> conditional_remove(const request_context& ctx, std::string_view type,
                                                  const std::vector<criterion>& criteria, bool allow_multiple);

  // Ids of current, non-deleted resources of `type` matching all criteria (AND).
  std::vector<std::string> find_ids(const request_context& ctx, std::string_view type,
                                    const std::vector<criterion>& criteria, std::size_t limit = 2);

  history_page history(const request_context& ctx, const history_query& query);

  // Writes every item (create or update by id, method PUT) in one transaction: all or nothing.
  // For bulk loads (NDJSON import, HIS back-fills): far fewer round trips than one request each.
  std::vector<stored_resource> put_all(const request_context& ctx, std::vector<batch_item> items);

  // Opens a transaction that every read and write made with a context whose `transaction` points
  // at it joins (transaction Bundles). commit() makes it durable and then runs the participants'
  // after_commit; destroying it uncommitted rolls everything back. Calls with such a context are
  // never retried one by one: on a conflict the caller retries the whole unit.
  std::unique_ptr<store_transaction> begin(const request_context& ctx);
  void commit(store_transaction& transaction);
  // Runs `body` in an open transaction (its buffered writes sent first): rows a caller keeps next
  // to the resources, committed or rolled back with them (a message adapter's message log).
  void execute_in(store_transaction& transaction, const std::function<void(pqxx::transaction_base&)>& body);
  // Inside an open transaction: locks the named resources' current rows in one statement, so
  // the writes that follow need no round trip each (transaction Bundles of many PUTs).
  void lock_for_write(const request_context& ctx, const std::vector<std::pair<std::string, std::string>>& resources);

  // Runs `body` inside the context's open transaction, or else in a read-only transaction on a
  // pooled connection (search, $everything: reads that must see a transaction's own writes).
  void read_with(const request_context& ctx, const std::function<void(pqxx::transaction_base&)>& body);

  // Connection for code that needs SQL of its own (health checks, later: search). Blocks until
  // one is free.
  class connection_lease {
   public:
    connection_lease(resource_store& store, pqxx::connection_base* c) : store_(&store), c_(c) {}
    connection_lease(connection_lease&& o) noexcept : store_(o.store_), c_(o.c_) { o.c_ = nullptr; }
    ~connection_lease();
    pqxx::connection_base& operator*() const noexcept { return *c_; }
    pqxx::connection_base* operator->() const noexcept { return c_; }
   private:
    resource_store* store_;
    pqxx::connection_base* c_;
  };
  connection_lease acquire();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace yilian::gateway
