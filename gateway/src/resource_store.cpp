// PostgreSQL resource store: a pool of connections with prepared statements; each write is one
// transaction holding the history row, the current row and every participant's rows (indexes).
//
// The JSON is stored as `text`, not `bytea`: libpqxx 6.4 returns text fields as they arrive from
// libpq (no copy, no decoding), while bytea comes back hex-encoded and needs PQunescapeBytea (a
// second pass and an allocation twice the size) on every read. The serialised FHIR JSON is valid
// UTF-8 without NUL bytes, so text loses nothing.
#include "yilian/gateway/resource_store.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <map>
#include <mutex>
#include <pqxx/pqxx>
#include <random>

#include "store_internal.hpp"
#include "yilian/fhir/json.hpp"

namespace yilian::gateway {

namespace {

constexpr int max_attempts = 8;  // retries of a write transaction on unique/serialisation conflicts

const char* const instant_sql = R"(to_char(last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"+00:00"'))";

std::string now_instant() {
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03d+00:00", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
  return buf;
}

}  // namespace

std::string new_resource_id() {
  unsigned char b[16];
  if (RAND_bytes(b, sizeof b) != 1) {
    std::random_device rd;
    for (auto& c : b) c = static_cast<unsigned char>(rd());
  }
  b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);
  b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += hex[b[i] >> 4];
    out += hex[b[i] & 15];
  }
  return out;
}

namespace {

std::string field(const pqxx::field& f) {
  return std::string(f.c_str(), f.size());
}

// Sets id, meta.versionId, meta.lastUpdated in place: id after resourceType, meta after id when
// absent; other meta members are kept.
void stamp(fhir::value& resource, const std::string& id, std::int64_t version, const std::string& instant) {
  auto& members = resource.members();
  auto position_after = [&](std::string_view name) {
    auto it = std::find_if(members.begin(), members.end(), [&](const fhir::member& m) { return m.name == name; });
    return it == members.end() ? members.begin() : it + 1;
  };
  if (fhir::value* existing = resource.find("id")) {
    *existing = fhir::value::make_string(id);
  } else {
    members.insert(position_after("resourceType"), fhir::member{"id", fhir::value::make_string(id)});
  }
  fhir::value* meta = resource.find("meta");
  if (!meta || !meta->is_object()) {
    if (meta) resource.erase("meta");
    meta = &members.insert(position_after("id"), fhir::member{"meta", fhir::value::make_object()})->val;
  }
  meta->set("versionId", fhir::value::make_string(std::to_string(version)));
  meta->set("lastUpdated", fhir::value::make_string(instant));
}

std::string patient_ref_id(const fhir::value* ref) {
  if (!ref || !ref->is_object()) return {};
  const fhir::value* r = ref->find("reference");
  if (!r || !r->is_string()) return {};
  std::string_view s = r->text();
  constexpr std::string_view prefix = "Patient/";
  if (s.substr(0, prefix.size()) != prefix) return {};
  s.remove_prefix(prefix.size());
  if (s.empty() || s.find('/') != std::string_view::npos) return {};
  return std::string(s);
}

std::string compartment_of(std::string_view type, const std::string& id, const fhir::value* content) {
  if (type == "Patient") return id;
  if (!content) return {};
  if (auto s = patient_ref_id(content->find("subject")); !s.empty()) return s;
  return patient_ref_id(content->find("patient"));
}

std::string normalised_criteria(const std::vector<criterion>& criteria) {
  std::vector<std::string> parts;
  for (const auto& c : criteria) parts.push_back(c.name + "=" + c.value);
  std::sort(parts.begin(), parts.end());
  std::string out;
  for (const auto& s : parts) out += s + "&";
  return out;
}

// "2026", "2026-11" → a value PostgreSQL casts to timestamptz.
std::string since_value(const std::string& s) {
  if (s.size() == 4) return s + "-01-01T00:00:00Z";
  if (s.size() == 7) return s + "-01T00:00:00Z";
  return s;
}

void prepare_all(pqxx::connection_base& c) {
  const std::string instant = instant_sql;
  c.prepare("read", "SELECT version, " + instant +
                        ", deleted, body FROM resource_current "
                        "WHERE tenant = $1 AND res_type = $2 AND res_id = $3");
  c.prepare("vread", "SELECT " + instant +
                         ", deleted, body, method FROM resource_version "
                         "WHERE tenant = $1 AND res_type = $2 AND res_id = $3 AND version = $4");
  c.prepare("current_for_update",
            "SELECT version, deleted FROM resource_current "
            "WHERE tenant = $1 AND res_type = $2 AND res_id = $3 FOR UPDATE");
  c.prepare("insert_version",
            "INSERT INTO resource_version (tenant, res_type, res_id, version, last_updated, deleted, method, "
            "compartment, body) VALUES ($1, $2, $3, $4, $5::timestamptz, $6, $7, $8, $9)");
  c.prepare("insert_current",
            "INSERT INTO resource_current (tenant, res_type, res_id, version, last_updated, deleted, compartment, "
            "body) VALUES ($1, $2, $3, $4, $5::timestamptz, $6, $7, $8)");
  c.prepare("update_current",
            "UPDATE resource_current SET version = $4, last_updated = $5::timestamptz, deleted = $6, "
            "compartment = $7, body = $8 WHERE tenant = $1 AND res_type = $2 AND res_id = $3");
  c.prepare("index_token_delete",
            "DELETE FROM index_token WHERE tenant = $1 AND res_type = $2 AND res_id = $3 AND param = $4");
  c.prepare("index_delete_all",
            "WITH s AS (DELETE FROM index_string WHERE tenant = $1 AND res_type = $2 AND res_id = $3), "
            "t AS (DELETE FROM index_token WHERE tenant = $1 AND res_type = $2 AND res_id = $3), "
            "r AS (DELETE FROM index_reference WHERE tenant = $1 AND res_type = $2 AND res_id = $3), "
            "d AS (DELETE FROM index_date WHERE tenant = $1 AND res_type = $2 AND res_id = $3), "
            "n AS (DELETE FROM index_number WHERE tenant = $1 AND res_type = $2 AND res_id = $3), "
            "q AS (DELETE FROM index_quantity WHERE tenant = $1 AND res_type = $2 AND res_id = $3) "
            "DELETE FROM index_uri WHERE tenant = $1 AND res_type = $2 AND res_id = $3");
  c.prepare("advisory_lock", "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))");
}

}  // namespace

struct pending_event {
  stored_resource resource;
  std::optional<fhir::value> content;
  std::string compartment;
};

// The writes of one transaction that PostgreSQL has not seen yet. They go out together (one
// statement per table, whatever their number) before the transaction's next read and before its
// commit; the participants (search index, outbox) get them as one batch too.
class write_buffer {
 public:
  write_buffer(pqxx::transaction_base& tx, const request_context& ctx,
               const std::vector<std::shared_ptr<write_participant>>& participants, std::deque<pending_event>& written,
               std::atomic<std::uint64_t>& versions_written)
      : tx_(tx), ctx_(ctx), participants_(participants), written_(written), versions_written_(versions_written) {}

  pqxx::transaction_base& tx() const noexcept { return tx_; }
  const request_context& context() const noexcept { return ctx_; }

  struct known_row {
    std::int64_t version = 0;  // 0: the resource does not exist
    bool deleted = false;
    bool in_database = false;  // resource_current has a row for it (sent, or there before)
  };
  // What this transaction already knows of a resource (written or locked by it), or null.
  known_row* known(const std::string& type, const std::string& id) {
    auto it = known_.find({type, id});
    return it == known_.end() ? nullptr : &it->second;
  }
  void remember(const std::string& type, const std::string& id, known_row row) { known_[{type, id}] = row; }

  pending_event& add() { return pending_.emplace_back(); }

  // Locks the current rows of many resources in one statement and remembers their versions, so
  // writing them later needs no round trip each.
  void lock(const std::vector<std::pair<std::string, std::string>>& resources) {
    detail::array_rows keys("", {{"res_type", "text"}, {"res_id", "text"}});
    for (const auto& [type, id] : resources)
      if (!known(type, id)) {
        keys.add({type, id});
        remember(type, id, {});
      }
    if (keys.empty()) return;
    auto rows = tx_.exec_params(
        "SELECT res_type, res_id, version, deleted FROM resource_current WHERE tenant = $1 AND (res_type, res_id) IN "
        "(SELECT * FROM unnest(" + keys.unnest_arguments() + ")) FOR UPDATE",
        pqxx::prepare::make_dynamic_params(keys.parameters(ctx_.tenant)));
    for (const auto& row : rows)
      remember(row[0].c_str(), row[1].c_str(), {row[2].as<std::int64_t>(), row[3].as<bool>(), true});
  }

  void flush() {
    if (pending_.empty()) return;
    using cols = std::vector<std::pair<std::string, std::string>>;
    const cols version_columns{{"res_type", "text"},     {"res_id", "text"},      {"version", "bigint"},
                               {"last_updated", "timestamptz"}, {"deleted", "boolean"}, {"method", "text"},
                               {"compartment", "text"},  {"body", "text"}};
    const cols current_columns{{"res_type", "text"},    {"res_id", "text"},      {"version", "bigint"},
                               {"last_updated", "timestamptz"}, {"deleted", "boolean"}, {"compartment", "text"},
                               {"body", "text"}};
    detail::array_rows versions("resource_version", version_columns);
    detail::array_rows inserts("resource_current", current_columns);
    detail::array_rows updates("resource_current", current_columns);
    std::map<std::pair<std::string, std::string>, const pending_event*> latest;
    for (const auto& e : pending_) {
      const auto& r = e.resource;
      std::string version = std::to_string(r.version);
      std::optional<std::string_view> compartment;
      if (!e.compartment.empty()) compartment = e.compartment;
      versions.add({r.type, r.id, version, r.last_updated, r.deleted ? "t" : "f", r.method, compartment, r.json});
      latest[{r.type, r.id}] = &e;
    }
    for (const auto& [key, e] : latest) {
      const auto& r = e->resource;
      known_row& k = known_[key];
      std::optional<std::string_view> compartment;
      if (!e->compartment.empty()) compartment = e->compartment;
      (k.in_database ? updates : inserts)
          .add({r.type, r.id, std::to_string(r.version), r.last_updated, r.deleted ? "t" : "f", compartment, r.json});
      k.in_database = true;
    }
    versions.insert(tx_, ctx_.tenant);
    inserts.insert(tx_, ctx_.tenant);
    if (!updates.empty())
      tx_.exec_params("UPDATE resource_current c SET version = u.version, last_updated = u.last_updated, "
                      "deleted = u.deleted, compartment = u.compartment, body = u.body FROM unnest(" +
                          updates.unnest_arguments() +
                          ") AS u(res_type, res_id, version, last_updated, deleted, compartment, body) "
                          "WHERE c.tenant = $1 AND c.res_type = u.res_type AND c.res_id = u.res_id",
                      pqxx::prepare::make_dynamic_params(updates.parameters(ctx_.tenant)));
    std::vector<write_event> events;
    events.reserve(pending_.size());
    for (const auto& e : pending_) events.push_back({&ctx_, &e.resource, e.content ? &*e.content : nullptr, e.compartment});
    for (const auto& p : participants_) p->in_transaction_batch(tx_, events);
    // A fresh database has no planner statistics until autovacuum's first round (a minute or
    // more); without them conditional matching (identifier lookups of every mapped message) scans
    // whole tables. The first 1,000, 10,000 and 100,000 versions this store writes refresh them.
    std::uint64_t before = versions_written_.fetch_add(pending_.size());
    for (std::uint64_t mark : {1'000ull, 10'000ull, 100'000ull})
      if (before < mark && before + pending_.size() >= mark)
        tx_.exec("ANALYZE resource_current, index_token, index_reference, index_string, index_date, index_uri");
    for (auto& e : pending_) written_.push_back(std::move(e));
    pending_.clear();
  }

 private:
  pqxx::transaction_base& tx_;
  const request_context& ctx_;
  const std::vector<std::shared_ptr<write_participant>>& participants_;
  std::deque<pending_event>& written_;
  std::atomic<std::uint64_t>& versions_written_;
  std::deque<pending_event> pending_;
  std::map<std::pair<std::string, std::string>, known_row> known_;
};

struct store_transaction::state {
  resource_store::connection_lease lease;
  std::unique_ptr<pqxx::work> tx;
  std::vector<std::shared_ptr<write_participant>> participants;
  request_context context;                // the unit's own copy (the buffer refers to it)
  std::deque<pending_event> written;      // sent, waiting for after_commit
  std::unique_ptr<write_buffer> buffer;
  bool committed = false;
};

store_transaction::store_transaction(std::unique_ptr<state> s) : state_(std::move(s)) {}
store_transaction::~store_transaction() = default;  // an uncommitted pqxx::work rolls back

struct resource_store::impl {
  std::string url;
  std::atomic<std::uint64_t> versions_written{0};
  std::mutex mutex;
  std::condition_variable available;
  std::vector<std::unique_ptr<pqxx::connection>> connections;
  std::vector<pqxx::connection*> free;
  std::vector<std::shared_ptr<write_participant>> participants;

  std::unique_ptr<pqxx::connection> open() {
    auto c = std::make_unique<pqxx::connection>(url);
    prepare_all(*c);
    return c;
  }

  pqxx::connection_base* acquire() {
    pqxx::connection* c = nullptr;
    {
      std::unique_lock lock(mutex);
      available.wait(lock, [&] { return !free.empty(); });
      c = free.back();
      free.pop_back();
    }
    if (c->is_open()) return c;
    // Broken earlier: reconnect now (outside the lock; the slot is ours).
    try {
      auto fresh = open();
      std::lock_guard lock(mutex);
      for (auto& slot : connections)
        if (slot.get() == c) {
          slot = std::move(fresh);
          return slot.get();
        }
    } catch (...) {
      release(c);
      throw;
    }
    return c;
  }

  void release(pqxx::connection_base* c) {
    {
      std::lock_guard lock(mutex);
      free.push_back(static_cast<pqxx::connection*>(c));
    }
    available.notify_one();
  }

  std::vector<std::shared_ptr<write_participant>> participants_copy() {
    std::lock_guard lock(mutex);
    return participants;
  }
};

resource_store::connection_lease::~connection_lease() {
  if (c_) store_->impl_->release(c_);
}

resource_store::connection_lease resource_store::acquire() {
  return connection_lease(*this, impl_->acquire());
}

resource_store::resource_store(std::string database_url, unsigned connections, bool search_indexing) : impl_(std::make_unique<impl>()) {
  impl_->url = std::move(database_url);
  if (connections == 0) connections = 1;
  for (unsigned i = 0; i < connections; ++i) {
    impl_->connections.push_back(impl_->open());
    impl_->free.push_back(impl_->connections.back().get());
  }
  if (search_indexing) impl_->participants.push_back(detail::make_search_indexer());
}

resource_store::~resource_store() = default;

int resource_store::schema_version() noexcept {
  return detail::migrations().back().version;
}

void resource_store::add_participant(std::shared_ptr<write_participant> participant) {
  std::lock_guard lock(impl_->mutex);
  impl_->participants.push_back(std::move(participant));
}

void resource_store::migrate() {
  auto lease = acquire();
  pqxx::work tx(*lease);
  // Serialise concurrent gateways migrating the same database.
  tx.exec("SELECT pg_advisory_xact_lock(7952148635120493)");
  tx.exec(
      "CREATE TABLE IF NOT EXISTS yilian_schema (version int NOT NULL PRIMARY KEY, "
      "applied_at timestamptz NOT NULL DEFAULT now())");
  auto r = tx.exec("SELECT coalesce(max(version), 0) FROM yilian_schema");
  int current = r[0][0].as<int>();
  if (current > schema_version())
    throw store_error(store_error_kind::schema_too_new,
                      "the database schema is version " + std::to_string(current) + ", newer than this yilian (" +
                          std::to_string(schema_version()) + "): upgrade yilian or use another database");
  for (const auto& m : detail::migrations()) {
    if (m.version <= current) continue;
    tx.exec(m.sql);
    tx.exec_params("INSERT INTO yilian_schema (version) VALUES ($1)", m.version);
  }
  tx.commit();
}

store_transaction::state* transaction_state(const request_context& ctx);

namespace {

// Runs `body(buffer)` in a transaction on a pooled connection, retrying on unique violations,
// serialisation failures and deadlocks; sends the buffered writes, commits, then runs the
// participants' after_commit. Inside a caller's transaction (transaction Bundles) the writes join
// its buffer, and a conflict propagates so the caller retries the whole unit.
template <typename F>
auto run_write(resource_store& store, const std::vector<std::shared_ptr<write_participant>>& participants,
               std::atomic<std::uint64_t>& versions_written, const request_context& ctx, F&& body) {
  if (store_transaction::state* unit = transaction_state(ctx)) return body(*unit->buffer);
  for (int attempt = 1;; ++attempt) {
    std::deque<pending_event> written;
    auto lease = store.acquire();
    try {
      pqxx::work tx(*lease);
      write_buffer buffer(tx, ctx, participants, written, versions_written);
      auto result = body(buffer);
      buffer.flush();
      tx.commit();
      for (auto& e : written) {
        write_event we{&ctx, &e.resource, e.content ? &*e.content : nullptr, e.compartment};
        for (auto& p : participants) p->after_commit(we);
      }
      return result;
    } catch (const pqxx::unique_violation&) {
      if (attempt >= max_attempts) throw;
    } catch (const pqxx::serialization_failure&) {
      if (attempt >= max_attempts) throw;
    } catch (const pqxx::deadlock_detected&) {
      if (attempt >= max_attempts) throw;
    } catch (const pqxx::broken_connection&) {
      // The server rolled the transaction back (a failure during COMMIT itself is an
      // in_doubt_error, never retried): reconnect on the next acquire and try again.
      lease->disconnect();
      if (attempt >= 2) throw;
    }
  }
}

// Runs a read-only `body(tx)`; a connection that broke since its last use (server restart, idle
// timeout) is replaced and the read retried once. Inside a caller's transaction the read joins it
// and sees its writes (the buffer is sent first).
template <typename F>
auto run_read(resource_store& store, const request_context& ctx, F&& body) {
  if (store_transaction::state* unit = transaction_state(ctx)) {
    unit->buffer->flush();
    return body(static_cast<pqxx::transaction_base&>(*unit->tx));
  }
  for (int attempt = 1;; ++attempt) {
    auto lease = store.acquire();
    try {
      pqxx::nontransaction tx(*lease);  // single statements: no BEGIN/COMMIT round trips
      return body(static_cast<pqxx::transaction_base&>(tx));
    } catch (const pqxx::broken_connection&) {
      lease->disconnect();
      if (attempt >= 2) throw;
    }
  }
}

// Buffers one new version (content = null: a deletion marker). Returns nullopt when deleting
// something missing or already deleted. The current row is locked (SELECT ... FOR UPDATE) unless
// this transaction already knows the resource or the id is brand new.
std::optional<stored_resource> write_version(write_buffer& buffer, std::string_view type, const std::string& id,
                                             const fhir::value* content, std::string_view method,
                                             std::optional<std::int64_t> if_match, bool* created,
                                             bool fresh_id = false) {
  const std::string e_type(type);
  const request_context& ctx = buffer.context();
  write_buffer::known_row old;
  bool exists = false;
  if (auto* k = buffer.known(e_type, id)) {
    old = *k;
    exists = k->version > 0;
  } else if (!fresh_id) {
    auto cur = buffer.tx().exec_prepared("current_for_update", ctx.tenant, e_type, id);
    if (!cur.empty()) {
      old.version = cur[0][0].as<std::int64_t>();
      old.deleted = cur[0][1].as<bool>();
      old.in_database = true;
      exists = true;
    }
  }
  if (if_match && (!exists || old.version != *if_match))
    throw store_error(store_error_kind::version_conflict,
                      "If-Match version " + std::to_string(*if_match) + " does not match the current version " +
                          (exists ? std::to_string(old.version) : std::string("(none)")) + " of " +
                          std::string(type) + "/" + id);
  if (!content && (!exists || old.deleted)) return std::nullopt;

  pending_event& e = buffer.add();
  e.resource.type = e_type;
  e.resource.id = id;
  e.resource.version = exists ? old.version + 1 : 1;
  e.resource.last_updated = now_instant();
  e.resource.deleted = content == nullptr;
  e.resource.method = std::string(method);
  if (content) {
    e.content = *content;
    stamp(*e.content, id, e.resource.version, e.resource.last_updated);
    e.resource.json = fhir::to_json(*e.content);
  }
  e.compartment = compartment_of(type, id, content);
  if (created) *created = !exists || old.deleted;
  buffer.remember(e_type, id, {e.resource.version, e.resource.deleted, old.in_database});
  return e.resource;
}

std::vector<std::string> find_ids_tx(pqxx::transaction_base& tx, const request_context& ctx, std::string_view type,
                                     const std::vector<criterion>& criteria, std::size_t limit) {
  std::vector<std::string> params{ctx.tenant, std::string(type)};
  std::string sql = "SELECT c.res_id FROM resource_current c WHERE c.tenant = $1 AND c.res_type = $2 AND NOT c.deleted";
  sql += detail::criteria_condition(ctx, type, criteria, params, "c");
  // Deliberately no ORDER BY ... LIMIT: with one, PostgreSQL walks resource_current in key order
  // testing each row against the index tables, hoping to stop early — a full scan whenever
  // nothing matches, which is the usual case of a conditional create (200 ms at 10,000 rows
  // before statistics existed). Without it the lookup starts from the selective index rows.
  std::vector<std::string> ids;
  for (const auto& row : tx.exec_params(sql, pqxx::prepare::make_dynamic_params(params))) ids.push_back(field(row[0]));
  std::sort(ids.begin(), ids.end());
  if (ids.size() > limit) ids.resize(limit);
  return ids;
}

void lock_criteria(pqxx::transaction_base& tx, const request_context& ctx, std::string_view type,
                   const std::vector<criterion>& criteria) {
  std::string key = ctx.tenant + '\x1f' + std::string(type) + '\x1f' + normalised_criteria(criteria);
  tx.exec_prepared("advisory_lock", key);
}

void check_criteria(const request_context& ctx, std::string_view type, const std::vector<criterion>& criteria) {
  if (criteria.empty())
    throw store_error(store_error_kind::invalid_criteria, "A conditional operation needs at least one criterion");
  std::vector<std::string> ignored;
  detail::criteria_condition(ctx, type, criteria, ignored, "c");  // throws invalid_criteria when malformed
}

std::string body_id(const fhir::value& resource) {
  const fhir::value* id = resource.find("id");
  return id && id->is_string() ? id->text() : std::string();
}

}  // namespace

std::optional<stored_resource> resource_store::read(const request_context& ctx, std::string_view type,
                                                    std::string_view id) {
  const std::string e_type(type), e_id(id);
  return run_read(*this, ctx, [&](pqxx::transaction_base& tx) -> std::optional<stored_resource> {
    auto r = tx.exec_prepared("read", ctx.tenant, e_type, e_id);
    if (r.empty()) return std::nullopt;
    stored_resource s;
    s.type = e_type;
    s.id = e_id;
    s.version = r[0][0].as<std::int64_t>();
    s.last_updated = field(r[0][1]);
    s.deleted = r[0][2].as<bool>();
    s.json = field(r[0][3]);
    return s;
  });
}

std::optional<stored_resource> resource_store::vread(const request_context& ctx, std::string_view type,
                                                     std::string_view id, std::int64_t version) {
  const std::string e_type(type), e_id(id);
  return run_read(*this, ctx, [&](pqxx::transaction_base& tx) -> std::optional<stored_resource> {
    auto r = tx.exec_prepared("vread", ctx.tenant, e_type, e_id, version);
    if (r.empty()) return std::nullopt;
    stored_resource s;
    s.type = e_type;
    s.id = e_id;
    s.version = version;
    s.last_updated = field(r[0][0]);
    s.deleted = r[0][1].as<bool>();
    s.json = field(r[0][2]);
    s.method = field(r[0][3]);
    return s;
  });
}

write_result resource_store::create(const request_context& ctx, std::string_view type, fhir::value resource,
                                    const std::vector<criterion>* if_none_exist) {
  if (if_none_exist) check_criteria(ctx, type, *if_none_exist);
  return run_write(*this, impl_->participants_copy(), impl_->versions_written, ctx, [&](write_buffer& buffer) {
    write_result w;
    if (if_none_exist) {
      buffer.flush();  // the criteria must see this transaction's earlier writes
      lock_criteria(buffer.tx(), ctx, type, *if_none_exist);
      auto ids = find_ids_tx(buffer.tx(), ctx, type, *if_none_exist, 2);
      if (ids.size() > 1)
        throw store_error(store_error_kind::multiple_matches,
                          "If-None-Exist matched more than one " + std::string(type));
      if (ids.size() == 1) {
        auto r = buffer.tx().exec_prepared("read", ctx.tenant, std::string(type), ids[0]);
        w.resource.type = std::string(type);
        w.resource.id = ids[0];
        w.resource.version = r[0][0].as<std::int64_t>();
        w.resource.last_updated = field(r[0][1]);
        w.resource.json = field(r[0][3]);
        w.unchanged = true;
        return w;
      }
    }
    w.resource = *write_version(buffer, type, new_resource_id(), &resource, "POST", std::nullopt, nullptr,
                                /*fresh_id=*/true);
    w.created = true;
    return w;
  });
}

write_result resource_store::update(const request_context& ctx, std::string_view type, std::string_view id,
                                    fhir::value resource, std::optional<std::int64_t> if_match,
                                    std::string_view method) {
  std::string rid(id);
  return run_write(*this, impl_->participants_copy(), impl_->versions_written, ctx, [&](write_buffer& buffer) {
    write_result w;
    w.resource = *write_version(buffer, type, rid, &resource, method, if_match, &w.created);
    return w;
  });
}

write_result resource_store::conditional_update(const request_context& ctx, std::string_view type,
                                                const std::vector<criterion>& criteria, fhir::value resource) {
  check_criteria(ctx, type, criteria);
  return run_write(*this, impl_->participants_copy(), impl_->versions_written, ctx, [&](write_buffer& buffer) {
    buffer.flush();  // the criteria must see this transaction's earlier writes
    lock_criteria(buffer.tx(), ctx, type, criteria);
    auto ids = find_ids_tx(buffer.tx(), ctx, type, criteria, 2);
    if (ids.size() > 1)
      throw store_error(store_error_kind::multiple_matches,
                        "The conditional update criteria matched more than one " + std::string(type));
    std::string given = body_id(resource);
    write_result w;
    if (ids.empty()) {
      std::string id = given.empty() ? new_resource_id() : given;
      w.resource = *write_version(buffer, type, id, &resource, "PUT", std::nullopt, &w.created);
      return w;
    }
    if (!given.empty() && given != ids[0])
      throw store_error(
          store_error_kind::invalid_criteria,
          "The resource id '" + given + "' differs from the matched resource " + std::string(type) + "/" + ids[0]);
    w.resource = *write_version(buffer, type, ids[0], &resource, "PUT", std::nullopt, &w.created);
    return w;
  });
}

std::optional<stored_resource> resource_store::remove(const request_context& ctx, std::string_view type,
                                                      std::string_view id, std::optional<std::int64_t> if_match) {
  std::string rid(id);
  return run_write(*this, impl_->participants_copy(), impl_->versions_written, ctx, [&](write_buffer& buffer) {
    return write_version(buffer, type, rid, nullptr, "DELETE", if_match, nullptr);
  });
}

std::vector<stored_resource> resource_store::conditional_remove(const request_context& ctx, std::string_view type,
                                                                const std::vector<criterion>& criteria,
                                                                bool allow_multiple) {
  check_criteria(ctx, type, criteria);
  return run_write(*this, impl_->participants_copy(), impl_->versions_written, ctx, [&](write_buffer& buffer) {
    buffer.flush();  // the criteria must see this transaction's earlier writes
    lock_criteria(buffer.tx(), ctx, type, criteria);
    auto ids = find_ids_tx(buffer.tx(), ctx, type, criteria, allow_multiple ? 1000000 : 2);
    if (!allow_multiple && ids.size() > 1)
      throw store_error(store_error_kind::multiple_matches,
                        "The conditional delete criteria matched more than one " + std::string(type));
    std::vector<stored_resource> out;
    for (const auto& id : ids)
      if (auto r = write_version(buffer, type, id, nullptr, "DELETE", std::nullopt, nullptr))
        out.push_back(std::move(*r));
    return out;
  });
}

std::vector<std::string> resource_store::find_ids(const request_context& ctx, std::string_view type,
                                                  const std::vector<criterion>& criteria, std::size_t limit) {
  return run_read(*this, ctx, [&](pqxx::transaction_base& tx) {
    return find_ids_tx(tx, ctx, type, criteria, limit);
  });
}

history_page resource_store::history(const request_context& ctx, const history_query& query) {
  std::vector<std::string> params{ctx.tenant};
  std::string where = " WHERE tenant = $1";
  if (query.type) {
    params.push_back(*query.type);
    where += " AND res_type = $" + std::to_string(params.size());
  }
  if (query.type && query.id) {
    params.push_back(*query.id);
    where += " AND res_id = $" + std::to_string(params.size());
  }
  if (query.since) {
    params.push_back(since_value(*query.since));
    where += " AND last_updated >= $" + std::to_string(params.size()) + "::timestamptz";
  }
  return run_read(*this, ctx, [&](pqxx::transaction_base& tx) {
    history_page page;
    page.total = tx.exec_params("SELECT count(*) FROM resource_version" + where,
                                pqxx::prepare::make_dynamic_params(params))[0][0]
                     .as<std::int64_t>();
    std::vector<std::string> p2 = params;
    p2.push_back(std::to_string(query.count));
    p2.push_back(std::to_string(query.offset));
    std::string sql = std::string("SELECT res_type, res_id, version, ") + instant_sql +
                      ", deleted, body, method FROM resource_version" + where +
                      (query.type && query.id ? " ORDER BY version DESC LIMIT $"  // immune to clock steps
                                              : " ORDER BY last_updated DESC, res_type, res_id, version DESC LIMIT $") +
                      std::to_string(p2.size() - 1) + " OFFSET $" + std::to_string(p2.size());
    for (const auto& row : tx.exec_params(sql, pqxx::prepare::make_dynamic_params(p2))) {
      stored_resource s;
      s.type = field(row[0]);
      s.id = field(row[1]);
      s.version = row[2].as<std::int64_t>();
      s.last_updated = field(row[3]);
      s.deleted = row[4].as<bool>();
      s.json = field(row[5]);
      s.method = field(row[6]);
      page.entries.push_back(std::move(s));
    }
    return page;
  });
}

store_transaction::state* transaction_state(const request_context& ctx) {
  return ctx.transaction ? ctx.transaction->get() : nullptr;
}

std::unique_ptr<store_transaction> resource_store::begin(const request_context& ctx) {
  if (ctx.transaction) throw std::logic_error("a store transaction is already open for this request");
  auto st = std::make_unique<store_transaction::state>(
      store_transaction::state{acquire(), nullptr, impl_->participants_copy(), ctx, {}, nullptr, false});
  st->context.transaction = nullptr;
  st->tx = std::make_unique<pqxx::work>(*st->lease);
  st->buffer =
      std::make_unique<write_buffer>(*st->tx, st->context, st->participants, st->written, impl_->versions_written);
  return std::make_unique<store_transaction>(std::move(st));
}

void resource_store::commit(store_transaction& transaction) {
  auto& st = *transaction.get();
  if (st.committed) throw std::logic_error("store transaction committed twice");
  st.buffer->flush();
  st.tx->commit();
  st.committed = true;
  for (auto& e : st.written) {
    write_event we{&st.context, &e.resource, e.content ? &*e.content : nullptr, e.compartment};
    for (auto& p : st.participants) p->after_commit(we);
  }
  st.written.clear();
}

void resource_store::read_with(const request_context& ctx, const std::function<void(pqxx::transaction_base&)>& body) {
  if (store_transaction::state* unit = transaction_state(ctx)) {
    unit->buffer->flush();
    return body(*unit->tx);
  }
  for (int attempt = 1;; ++attempt) {
    auto lease = acquire();
    try {
      pqxx::read_transaction tx(*lease);
      body(tx);
      return;
    } catch (const pqxx::broken_connection&) {
      lease->disconnect();
      if (attempt >= 2) throw;
    }
  }
}

void resource_store::execute_in(store_transaction& transaction,
                                const std::function<void(pqxx::transaction_base&)>& body) {
  auto& st = *transaction.get();
  st.buffer->flush();
  body(*st.tx);
}

void resource_store::lock_for_write(const request_context& ctx,
                                    const std::vector<std::pair<std::string, std::string>>& resources) {
  store_transaction::state* unit = transaction_state(ctx);
  if (!unit) throw std::logic_error("lock_for_write needs an open store transaction");
  unit->buffer->lock(resources);
}

std::vector<stored_resource> resource_store::put_all(const request_context& ctx, std::vector<batch_item> items) {
  return run_write(*this, impl_->participants_copy(), impl_->versions_written, ctx, [&](write_buffer& buffer) {
    std::vector<stored_resource> out;
    out.reserve(items.size());
    std::vector<std::pair<std::string, std::string>> keys;
    keys.reserve(items.size());
    for (const auto& item : items) keys.emplace_back(item.type, item.id);
    buffer.lock(keys);
    for (auto& item : items)
      out.push_back(*write_version(buffer, item.type, item.id, &item.resource, "PUT", std::nullopt, nullptr));
    return out;
  });
}

}  // namespace yilian::gateway
