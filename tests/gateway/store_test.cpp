#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <pqxx/pqxx>
#include <set>
#include <thread>

#include "test_database.hpp"
#include "yilian/gateway/resource_store.hpp"
#include "yilian/gateway/search.hpp"

using namespace yilian;
using fhir::value;
using gateway::criterion;
using gateway::request_context;
using gateway::resource_store;
using gateway::store_error;
using gateway::store_error_kind;

namespace {

// Skips (with a message) when not run under ctest's shared PostgreSQL fixture.
#define YILIAN_REQUIRE_DATABASE(url, hint)                                                                     \
  std::string url = yilian::test::fresh_database_url(hint);                                                    \
  if (url.empty()) {                                                                                           \
    MESSAGE("skipped: YILIAN_TEST_DATABASE_URL_FILE is not set (run through ctest, which starts PostgreSQL)"); \
    return;                                                                                                    \
  }

value identifier(const std::string& system, const std::string& v) {
  value id = value::make_object();
  if (!system.empty()) id.set("system", value::make_string(system));
  id.set("value", value::make_string(v));
  return id;
}

value patient(std::vector<value> identifiers = {}, const std::string& family = "Chen") {
  value p = value::make_object();
  p.set("resourceType", value::make_string("Patient"));
  if (!identifiers.empty()) {
    value& arr = p.set("identifier", value::make_array());
    for (auto& i : identifiers) arr.push_back(std::move(i));
  }
  value name = value::make_object();
  name.set("family", value::make_string(family));
  p.set("name", value::make_array()).push_back(std::move(name));
  return p;
}

request_context tenant(std::string name) {
  request_context ctx;
  ctx.tenant = std::move(name);
  return ctx;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

store_error_kind error_kind_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const store_error& e) {
    return e.kind();
  }
  FAIL("expected a store_error");
  return store_error_kind::not_found;
}

}  // namespace

TEST_CASE("store: migrations are idempotent and a newer schema is refused") {
  YILIAN_REQUIRE_DATABASE(url, "migrations");
  {
    resource_store store(url, 1);
    store.migrate();
    store.migrate();
  }
  pqxx::connection c(url);
  {
    pqxx::work tx(c);
    CHECK(tx.exec("SELECT max(version) FROM yilian_schema")[0][0].as<int>() == resource_store::schema_version());
    CHECK(tx.exec("SELECT count(*) FROM yilian_schema")[0][0].as<int>() == resource_store::schema_version());
    tx.exec_params("INSERT INTO yilian_schema (version) VALUES ($1)", resource_store::schema_version() + 1);
    tx.commit();
  }
  resource_store store(url, 1);
  CHECK(error_kind_of([&] { store.migrate(); }) == store_error_kind::schema_too_new);
}

TEST_CASE("store: gateways starting together migrate once") {
  YILIAN_REQUIRE_DATABASE(url, "migrate_parallel");
  std::atomic<int> errors{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < 4; ++t)
    pool.emplace_back([&] {
      try {
        resource_store store(url, 1);
        store.migrate();
      } catch (...) {
        ++errors;
      }
    });
  for (auto& t : pool) t.join();
  CHECK(errors == 0);
  pqxx::connection c(url);
  pqxx::nontransaction tx(c);
  CHECK(tx.exec("SELECT count(*) FROM yilian_schema")[0][0].as<int>() == resource_store::schema_version());
}

TEST_CASE("store: create, read, vread, update, delete, history") {
  YILIAN_REQUIRE_DATABASE(url, "crud");
  resource_store store(url, 2);
  store.migrate();
  request_context ctx;

  value p = patient({identifier("urn:oid:1.2.36.146.595.217.0.1", "12345")});
  value meta = value::make_object();
  meta.set("source", value::make_string("urn:test"));
  p.set("meta", std::move(meta));
  auto w = store.create(ctx, "Patient", p);
  CHECK(w.created);
  CHECK_FALSE(w.unchanged);
  const std::string id = w.resource.id;
  CHECK(id.size() == 36);
  CHECK(w.resource.version == 1);
  CHECK(w.resource.last_updated.size() == 29);  // 2026-11-23T20:44:41.123+00:00
  CHECK(w.resource.last_updated.substr(23) == "+00:00");
  CHECK(contains(w.resource.json, "\"id\":\"" + id + "\""));
  CHECK(contains(w.resource.json, "\"versionId\":\"1\""));
  CHECK(contains(w.resource.json, "\"lastUpdated\":\"" + w.resource.last_updated + "\""));
  CHECK(contains(w.resource.json, "\"source\":\"urn:test\""));
  // id right after resourceType
  CHECK(w.resource.json.rfind("{\"resourceType\":\"Patient\",\"id\":", 0) == 0);

  auto r = store.read(ctx, "Patient", id);
  REQUIRE(r);
  CHECK(r->json == w.resource.json);
  CHECK(r->version == 1);
  CHECK(r->last_updated == w.resource.last_updated);
  CHECK_FALSE(r->deleted);
  CHECK_FALSE(store.read(ctx, "Patient", "nope"));
  CHECK_FALSE(store.read(ctx, "Observation", id));
  CHECK_FALSE(store.read(tenant("other"), "Patient", id));

  auto u = store.update(ctx, "Patient", id, patient({}, "Wang"));
  CHECK_FALSE(u.created);
  CHECK(u.resource.version == 2);
  CHECK(contains(u.resource.json, "\"versionId\":\"2\""));
  CHECK(contains(u.resource.json, "Wang"));
  // meta placed right after id when the body has none
  CHECK(contains(u.resource.json, "\"id\":\"" + id + "\",\"meta\":{"));

  auto v1 = store.vread(ctx, "Patient", id, 1);
  REQUIRE(v1);
  CHECK(v1->json == w.resource.json);
  CHECK(v1->method == "POST");
  auto v2 = store.vread(ctx, "Patient", id, 2);
  REQUIRE(v2);
  CHECK(contains(v2->json, "Wang"));
  CHECK(v2->method == "PUT");
  CHECK_FALSE(store.vread(ctx, "Patient", id, 3));

  auto d = store.remove(ctx, "Patient", id);
  REQUIRE(d);
  CHECK(d->deleted);
  CHECK(d->version == 3);
  CHECK(d->json.empty());
  CHECK_FALSE(store.remove(ctx, "Patient", id));  // already deleted
  CHECK_FALSE(store.remove(ctx, "Patient", "never-existed"));
  r = store.read(ctx, "Patient", id);
  REQUIRE(r);
  CHECK(r->deleted);
  CHECK(r->version == 3);
  CHECK(store.find_ids(ctx, "Patient", {{"_id", id}}).empty());

  // Update resurrects a deleted resource.
  auto again = store.update(ctx, "Patient", id, patient({}, "Li"));
  CHECK(again.created);
  CHECK(again.resource.version == 4);

  gateway::history_query q;
  q.type = "Patient";
  q.id = id;
  auto h = store.history(ctx, q);
  CHECK(h.total == 4);
  REQUIRE(h.entries.size() == 4);
  CHECK(h.entries[0].version == 4);
  CHECK(h.entries[1].version == 3);
  CHECK(h.entries[1].deleted);
  CHECK(h.entries[1].method == "DELETE");
  CHECK(h.entries[3].version == 1);

  store.create(ctx, "Observation", [] {
    value o = value::make_object();
    o.set("resourceType", value::make_string("Observation"));
    o.set("status", value::make_string("final"));
    return o;
  }());
  gateway::history_query all;
  CHECK(store.history(ctx, all).total == 5);
  all.count = 2;
  all.offset = 1;
  auto page = store.history(ctx, all);
  CHECK(page.total == 5);
  CHECK(page.entries.size() == 2);
  gateway::history_query type_only;
  type_only.type = "Patient";
  CHECK(store.history(ctx, type_only).total == 4);
  type_only.since = "2999-01-01T00:00:00Z";
  CHECK(store.history(ctx, type_only).total == 0);
  type_only.since = "2000";
  CHECK(store.history(ctx, type_only).total == 4);
  CHECK(store.history(tenant("other"), gateway::history_query{}).total == 0);
}

TEST_CASE("store: If-Match conflicts") {
  YILIAN_REQUIRE_DATABASE(url, "ifmatch");
  resource_store store(url, 1);
  store.migrate();
  request_context ctx;
  auto w = store.create(ctx, "Patient", patient());
  store.update(ctx, "Patient", w.resource.id, patient(), 1);
  CHECK(error_kind_of([&] { store.update(ctx, "Patient", w.resource.id, patient(), 1); }) ==
        store_error_kind::version_conflict);
  CHECK(error_kind_of([&] { store.update(ctx, "Patient", "missing", patient(), 1); }) ==
        store_error_kind::version_conflict);
  CHECK(error_kind_of([&] { store.remove(ctx, "Patient", w.resource.id, 1); }) == store_error_kind::version_conflict);
  CHECK(store.remove(ctx, "Patient", w.resource.id, 2));
  CHECK(store.read(ctx, "Patient", w.resource.id)->version == 3);
}

TEST_CASE("store: 16 threads updating with If-Match lose no version") {
  YILIAN_REQUIRE_DATABASE(url, "ifmatch_parallel");
  resource_store store(url, 8);  // fewer connections than threads: acquire() must wait
  store.migrate();
  request_context ctx;
  const std::string id = store.create(ctx, "Patient", patient()).resource.id;
  constexpr int threads = 16, per_thread = 3;
  std::mutex m;
  std::vector<std::int64_t> versions;
  std::atomic<int> conflicts{0}, other_errors{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      int done = 0;
      while (done < per_thread) {
        try {
          auto current = store.read(ctx, "Patient", id);
          auto w = store.update(ctx, "Patient", id, patient({}, "T" + std::to_string(t)), current->version);
          std::lock_guard lock(m);
          versions.push_back(w.resource.version);
          ++done;
        } catch (const store_error& e) {
          if (e.kind() == store_error_kind::version_conflict)
            ++conflicts;
          else
            ++other_errors;
        } catch (...) {
          ++other_errors;
          return;
        }
      }
    });
  for (auto& t : pool) t.join();
  CHECK(other_errors == 0);
  std::sort(versions.begin(), versions.end());
  REQUIRE(versions.size() == threads * per_thread);
  for (std::size_t i = 0; i < versions.size(); ++i) CHECK(versions[i] == static_cast<std::int64_t>(i) + 2);
  CHECK(store.read(ctx, "Patient", id)->version == threads * per_thread + 1);
  gateway::history_query q;
  q.type = "Patient";
  q.id = id;
  q.count = 1000;
  auto h = store.history(ctx, q);
  CHECK(h.total == threads * per_thread + 1);
  MESSAGE("If-Match conflicts retried: " << conflicts.load());
}

TEST_CASE("store: 16 parallel conditional creates with the same identifier create exactly one resource") {
  YILIAN_REQUIRE_DATABASE(url, "cond_create");
  resource_store store(url, 16);
  store.migrate();
  request_context ctx;
  const std::vector<criterion> criteria{{"identifier", "http://hospital.example/mrn|A-77"}};
  std::mutex m;
  std::vector<gateway::write_result> results;
  std::atomic<int> errors{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < 16; ++t)
    pool.emplace_back([&] {
      try {
        auto w = store.create(ctx, "Patient", patient({identifier("http://hospital.example/mrn", "A-77")}), &criteria);
        std::lock_guard lock(m);
        results.push_back(w);
      } catch (...) {
        ++errors;
      }
    });
  for (auto& t : pool) t.join();
  CHECK(errors == 0);
  REQUIRE(results.size() == 16);
  int created = 0;
  std::set<std::string> ids;
  for (const auto& r : results) {
    created += r.created;
    CHECK(r.created != r.unchanged);
    ids.insert(r.resource.id);
  }
  CHECK(created == 1);
  CHECK(ids.size() == 1);
  CHECK(store.find_ids(ctx, "Patient", criteria, 10).size() == 1);
  CHECK(store.history(ctx, gateway::history_query{}).total == 1);

  // Two existing matches: multiple_matches.
  store.create(ctx, "Patient", patient({identifier("http://hospital.example/mrn", "A-77")}));
  CHECK(error_kind_of([&] { store.create(ctx, "Patient", patient(), &criteria); }) ==
        store_error_kind::multiple_matches);
  const std::vector<criterion> unsupported{{"nickname", "Chen"}};
  CHECK(error_kind_of([&] { store.create(ctx, "Patient", patient(), &unsupported); }) ==
        store_error_kind::invalid_criteria);
}

TEST_CASE("store: concurrent create-on-update of the same new id") {
  YILIAN_REQUIRE_DATABASE(url, "create_on_update");
  resource_store store(url, 16);
  store.migrate();
  request_context ctx;
  std::mutex m;
  std::vector<gateway::write_result> results;
  std::atomic<int> errors{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < 16; ++t)
    pool.emplace_back([&] {
      try {
        value p = patient();
        p.set("id", value::make_string("race-1"));
        auto w = store.update(ctx, "Patient", "race-1", std::move(p));
        std::lock_guard lock(m);
        results.push_back(w);
      } catch (...) {
        ++errors;
      }
    });
  for (auto& t : pool) t.join();
  CHECK(errors == 0);
  REQUIRE(results.size() == 16);
  std::vector<std::int64_t> versions;
  int created = 0;
  for (const auto& r : results) {
    versions.push_back(r.resource.version);
    created += r.created;
  }
  std::sort(versions.begin(), versions.end());
  for (std::size_t i = 0; i < versions.size(); ++i) CHECK(versions[i] == static_cast<std::int64_t>(i) + 1);
  CHECK(created == 1);
}

TEST_CASE("store: identifier and _id criteria") {
  YILIAN_REQUIRE_DATABASE(url, "find_ids");
  resource_store store(url, 2);
  store.migrate();
  request_context ctx;
  auto mk = [&](const std::string& id, std::vector<value> ids) {
    value p = patient(std::move(ids));
    store.update(ctx, "Patient", id, std::move(p));
  };
  mk("a", {identifier("http://s1", "v1")});
  mk("b", {identifier("http://s2", "v1")});
  mk("c", {identifier("", "v1")});
  mk("d", {identifier("http://s1", "v2"), identifier("http://s3", "x,y|z")});
  using ids = std::vector<std::string>;
  auto find = [&](std::vector<criterion> c) { return store.find_ids(ctx, "Patient", c, 100); };
  CHECK(find({{"identifier", "http://s1|v1"}}) == ids{"a"});
  CHECK(find({{"identifier", "|v1"}}) == ids{"c"});
  CHECK(find({{"identifier", "v1"}}) == ids{"a", "b", "c"});
  CHECK(find({{"identifier", "http://s1|"}}) == ids{"a", "d"});
  CHECK(find({{"identifier", "http://s1|v1,http://s2|v1"}}) == ids{"a", "b"});
  CHECK(find({{"identifier", "http://s3|x\\,y\\|z"}}) == ids{"d"});
  CHECK(find({{"identifier", "http://s9|v1"}}).empty());
  CHECK(find({{"_id", "a,c,zz"}}) == ids{"a", "c"});
  CHECK(find({{"_id", "a,b"}, {"identifier", "http://s2|v1"}}) == ids{"b"});
  CHECK(store.find_ids(ctx, "Patient", {{"identifier", "v1"}}) == ids{"a", "b"});  // default limit 2
  CHECK(store.find_ids(tenant("t2"), "Patient", {{"identifier", "v1"}}).empty());
  CHECK(store.find_ids(ctx, "Observation", {{"identifier", "v1"}}).empty());
  CHECK(error_kind_of([&] { find({{"birthdate", "20x0"}}); }) == store_error_kind::invalid_criteria);
  CHECK(error_kind_of([&] { find({{"no-such-param", "1"}}); }) == store_error_kind::invalid_criteria);

  // Index rows follow updates and deletes.
  mk("a", {identifier("http://s1", "v9")});
  CHECK(find({{"identifier", "http://s1|v1"}}).empty());
  CHECK(find({{"identifier", "http://s1|v9"}}) == ids{"a"});
  store.remove(ctx, "Patient", "a");
  CHECK(find({{"identifier", "http://s1|v9"}}).empty());

  gateway::search_query query;
  query.criteria = {{"identifier", "v1"}};
  query.count = 1;
  auto first = gateway::run_search(store, ctx, "Patient", query);
  CHECK_FALSE(first.total);  // not free to know without counting: only on request
  query.total = gateway::total_mode::accurate;
  first = gateway::run_search(store, ctx, "Patient", query);
  CHECK(first.total == 2);
  REQUIRE(first.matches.size() == 1);
  CHECK(first.matches[0].id == "b");
  REQUIRE_FALSE(first.next_cursor.empty());
  query.cursor = first.next_cursor;
  auto second = gateway::run_search(store, ctx, "Patient", query);
  REQUIRE(second.matches.size() == 1);
  CHECK(second.matches[0].id == "c");
  CHECK(contains(second.matches[0].json, "\"id\":\"c\""));
  CHECK(second.next_cursor.empty());
}

TEST_CASE("store: conditional update and conditional delete") {
  YILIAN_REQUIRE_DATABASE(url, "cond_update");
  resource_store store(url, 2);
  store.migrate();
  request_context ctx;
  const std::vector<criterion> c{{"identifier", "http://s|1"}};
  auto first = store.conditional_update(ctx, "Patient", c, patient({identifier("http://s", "1")}));
  CHECK(first.created);
  auto second = store.conditional_update(ctx, "Patient", c, patient({identifier("http://s", "1")}, "Zhao"));
  CHECK_FALSE(second.created);
  CHECK(second.resource.id == first.resource.id);
  CHECK(second.resource.version == 2);
  value wrong = patient({identifier("http://s", "1")});
  wrong.set("id", value::make_string("other-id"));
  CHECK(error_kind_of([&] { store.conditional_update(ctx, "Patient", c, wrong); }) ==
        store_error_kind::invalid_criteria);
  // No match with a body id: created with that id.
  value with_id = patient({identifier("http://s", "2")});
  with_id.set("id", value::make_string("given-id"));
  auto third = store.conditional_update(ctx, "Patient", {{"identifier", "http://s|2"}}, with_id);
  CHECK(third.created);
  CHECK(third.resource.id == "given-id");

  store.update(ctx, "Patient", "dup", patient({identifier("http://s", "1")}));
  CHECK(error_kind_of([&] { store.conditional_update(ctx, "Patient", c, patient()); }) ==
        store_error_kind::multiple_matches);
  CHECK(error_kind_of([&] { store.conditional_remove(ctx, "Patient", c, false); }) ==
        store_error_kind::multiple_matches);
  auto removed = store.conditional_remove(ctx, "Patient", c, true);
  CHECK(removed.size() == 2);
  CHECK(store.find_ids(ctx, "Patient", c).empty());
  CHECK(store.conditional_remove(ctx, "Patient", c, true).empty());
}

TEST_CASE("store: compartment column") {
  YILIAN_REQUIRE_DATABASE(url, "compartment");
  resource_store store(url, 1);
  store.migrate();
  request_context ctx;
  store.update(ctx, "Patient", "p1", patient());
  value obs = value::make_object();
  obs.set("resourceType", value::make_string("Observation"));
  value subject = value::make_object();
  subject.set("reference", value::make_string("Patient/p1"));
  obs.set("subject", std::move(subject));
  auto o = store.create(ctx, "Observation", obs);
  auto lease = store.acquire();
  pqxx::work tx(*lease);
  CHECK(tx.exec("SELECT compartment FROM resource_current WHERE res_id = 'p1'")[0][0].as<std::string>() == "p1");
  CHECK(tx.exec_params("SELECT compartment FROM resource_version WHERE res_id = $1", o.resource.id)[0][0]
            .as<std::string>() == "p1");
}

TEST_CASE("store: a connection killed by the server is replaced") {
  YILIAN_REQUIRE_DATABASE(url, "reconnect");
  resource_store store(url, 1);
  store.migrate();
  request_context ctx;
  store.update(ctx, "Patient", "p1", patient());
  auto kill_backends = [&] {
    pqxx::connection admin(url);
    pqxx::nontransaction tx(admin);
    tx.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()");
  };
  kill_backends();
  CHECK(store.read(ctx, "Patient", "p1"));
  kill_backends();
  CHECK(store.update(ctx, "Patient", "p1", patient()).resource.version == 2);
  kill_backends();
  CHECK(store.history(ctx, gateway::history_query{}).total == 2);
}
