// Bulk Data export and NDJSON bulk load through fhir_api::handle against PostgreSQL: kick-off
// errors, status and manifest, files split by size, a full round trip into an empty database,
// Patient- and Group-level exports, _type/_since, cancel, expiry, and a job taken over after its
// runner's lease ran out. The runner's run_once() is called directly so every step is determined.
#include "yilian/gateway/bulk_data.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <pqxx/pqxx>
#include <set>
#include <thread>

#include "test_database.hpp"
#include "test_support.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"

using namespace yilian;
using gateway::http_request;
using gateway::http_response;
using keys = std::set<std::string>;

namespace {

constexpr std::string_view host = "http://test.local";

struct server {
  std::string url;
  gateway::resource_store store;
  gateway::fhir_api api;
  gateway::export_runner runner;

  server(const std::string& name, gateway::bulk_export_options options = small_files())
      : url(test::fresh_database_url(name)), store(url, 2), api(store, make_options()), runner(url, options) {
    store.migrate();
    gateway::register_bulk_export(api, store, options);
    gateway::register_bulk_import(api, store, {.chunk_lines = 7});
  }

  static gateway::bulk_export_options small_files() {
    gateway::bulk_export_options o;
    o.max_file_bytes = 2048;  // several files per type
    o.fetch_rows = 3;
    return o;
  }

  static gateway::fhir_api_options make_options() {
    gateway::fhir_api_options o;
    o.base_url = std::string(host) + "/fhir";
    return o;
  }

  http_response call(std::string method, std::string target, std::vector<gateway::http_header> headers = {},
                     std::string body = {}) {
    http_request req;
    req.method = std::move(method);
    req.target = std::move(target);
    req.headers = std::move(headers);
    req.body = std::move(body);
    return api.handle(req);
  }

  void put(const std::string& type, const std::string& id, const std::string& body) {
    fhir::value resource = test::parse_json_or_fail(body);
    resource.set("id", fhir::value::make_string(id));
    auto res =
        call("PUT", "/fhir/" + type + "/" + id, {{"Content-Type", "application/fhir+json"}}, fhir::to_json(resource));
    REQUIRE_MESSAGE(res.status < 300, type << "/" << id << ": " << res.body);
  }

  // Patients p<i> with `observations` Observations each, plus shared resources.
  void load_patients(int first, int last, int observations) {
    for (int i = first; i <= last; ++i) {
      std::string p = "p" + std::to_string(i);
      put("Patient", p,
          R"({"resourceType":"Patient","name":[{"family":"Family )" + std::to_string(i) +
              R"(","given":["名字"]}],"gender":"female","birthDate":"1980-01-0)" + std::to_string(1 + i % 9) +
              R"(","generalPractitioner":[{"reference":"Practitioner/doc"}]})");
      for (int k = 0; k < observations; ++k)
        put("Observation", p + "-o" + std::to_string(k),
            R"({"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"2339-0"}]},
                "subject":{"reference":"Patient/)" +
                p + R"("},"performer":[{"reference":"Practitioner/doc"}],
                "valueQuantity":{"value":)" +
                std::to_string(4 + k) + R"(,"unit":"mmol/L","system":"http://unitsofmeasure.org","code":"mmol/L"}})");
    }
  }

  // Kick-off; returns the status path (relative to the host).
  std::string kickoff(const std::string& target) {
    auto res = call("GET", target, {{"Prefer", "respond-async"}, {"Accept", "application/fhir+json"}});
    REQUIRE_MESSAGE(res.status == 202, target << " -> " << res.status << " " << res.body);
    std::string location(res.header("Content-Location"));
    REQUIRE(location.starts_with(std::string(host) + "/fhir/$export-status/"));
    return location.substr(host.size());
  }

  // Runs queued jobs, then answers the manifest.
  fhir::value complete(const std::string& status_path) {
    auto pending = call("GET", status_path);
    CHECK(pending.status == 202);
    CHECK(!pending.header("X-Progress").empty());
    CHECK(!pending.header("Retry-After").empty());
    while (runner.run_once()) {
    }
    auto done = call("GET", status_path);
    REQUIRE_MESSAGE(done.status == 200, done.body);
    CHECK(done.header("Content-Type") == "application/json");
    CHECK(!done.header("Expires").empty());
    return test::parse_json_or_fail(done.body);
  }

  // Downloads every file of a manifest; checks count and type of each line.
  std::vector<std::string> download(const fhir::value& manifest, std::size_t max_file_bytes = 2048) {
    std::vector<std::string> lines;
    for (const auto& file : manifest.find("output")->items()) {
      std::string url = file.find("url")->text();
      auto res = call("GET", url.substr(host.size()));
      REQUIRE_MESSAGE(res.status == 200, url << ": " << res.body);
      CHECK(res.header("Content-Type") == "application/fhir+ndjson");
      std::size_t count = 0;
      for (std::size_t start = 0; start < res.body.size();) {
        auto end = res.body.find('\n', start);
        REQUIRE(end != std::string::npos);  // every line ends with a newline
        std::string line = res.body.substr(start, end - start);
        CHECK(test::parse_json_or_fail(line).find("resourceType")->text() == file.find("type")->text());
        lines.push_back(std::move(line));
        ++count;
        start = end + 1;
      }
      CHECK(std::to_string(count) == file.find("count")->text());
      if (count > 1) CHECK(res.body.size() <= max_file_bytes);  // only a lone large resource may exceed it
    }
    return lines;
  }

  static keys keys_of(const std::vector<std::string>& lines) {
    keys out;
    for (const auto& line : lines) {
      fhir::value r = test::parse_json_or_fail(line);
      out.insert(r.find("resourceType")->text() + "/" + r.find("id")->text());
    }
    return out;
  }

  void sql(const std::string& statement) {
    pqxx::connection c(url);
    pqxx::work tx(c);
    tx.exec(statement);
    tx.commit();
  }

  // Current resources as (Type/id -> content without meta.versionId/lastUpdated).
  std::map<std::string, std::string> contents() {
    std::map<std::string, std::string> out;
    pqxx::connection c(url);
    pqxx::read_transaction tx(c);
    for (const auto& row : tx.exec("SELECT res_type, res_id, body FROM resource_current WHERE NOT deleted")) {
      fhir::value r = test::parse_json_or_fail(row[2].c_str());
      if (auto* meta = r.find("meta")) {
        meta->erase("versionId");
        meta->erase("lastUpdated");
        if (meta->members().empty()) r.erase("meta");
      }
      out[std::string(row[0].c_str()) + "/" + row[1].c_str()] = fhir::to_json(r);
    }
    return out;
  }
};

std::string join_lines(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

}  // namespace

TEST_CASE("$export kick-off: Prefer respond-async, _outputFormat, _type and the Group are checked") {
  server s("export_kickoff");
  s.put("Group", "g1", R"({"resourceType":"Group","type":"person","actual":true})");
  auto no_prefer = s.call("GET", "/fhir/$export");
  CHECK(no_prefer.status == 400);
  CHECK(no_prefer.body.find("respond-async") != std::string::npos);
  std::vector<gateway::http_header> async{{"Prefer", "respond-async"}};
  CHECK(s.call("GET", "/fhir/$export?_outputFormat=text/csv", async).status == 400);
  CHECK(s.call("GET", "/fhir/$export?_type=Nonsense", async).status == 400);
  CHECK(s.call("GET", "/fhir/$export?_since=last-week", async).status == 400);
  CHECK(s.call("GET", "/fhir/$export?_typeFilter=Patient%3Factive%3Dtrue", async).status == 400);
  CHECK(s.call("GET", "/fhir/Patient/$export?_type=Organization", async).status == 400);
  CHECK(s.call("GET", "/fhir/Group/nope/$export", async).status == 404);
  CHECK(s.call("POST", "/fhir/$export", async).status == 405);
  for (const char* format : {"application/fhir%2Bndjson", "application/ndjson", "ndjson"})
    CHECK(s.call("GET", std::string("/fhir/$export?_outputFormat=") + format, async).status == 202);
  CHECK(s.call("GET", "/fhir/Group/g1/$export", async).status == 202);
  CHECK(s.call("GET", "/fhir/$export-status/unknown").status == 404);
  CHECK(s.call("GET", "/fhir/$export-file/unknown/1").status == 404);
}

TEST_CASE(
    "$export round trip: every file downloaded and loaded with $import into an empty database gives the same "
    "resources") {
  server source("export_round_trip");
  source.put("Practitioner", "doc", R"({"resourceType":"Practitioner","name":[{"family":"Zhang"}]})");
  source.put("Organization", "org", R"({"resourceType":"Organization","name":"临沂市人民医院"})");
  source.load_patients(1, 12, 4);
  // A subset of the official examples: many resource types and shapes.
  std::size_t examples = 0;
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(YILIAN_FHIR_PACKAGE_DIR))
    if (e.path().extension() == ".json" && e.path().filename() != "package.json") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (std::size_t i = 0; i < files.size(); i += 25) {
    fhir::value r;
    fhir::issue_list issues;
    if (!fhir::parse_json(test::read_file(files[i]), r, issues) || !r.find("id")) continue;
    std::string type = r.find("resourceType")->text();
    auto res = source.call("PUT", "/fhir/" + type + "/" + r.find("id")->text(),
                           {{"Content-Type", "application/fhir+json"}}, fhir::to_json(r));
    if (res.status < 300) ++examples;
  }
  CHECK(examples > 100);

  fhir::value manifest = source.complete(source.kickoff("/fhir/$export"));
  CHECK(manifest.find("requiresAccessToken")->as_bool() == false);
  CHECK(manifest.find("request")->text() == "http://test.local/fhir/$export");
  CHECK(!manifest.find("transactionTime")->text().empty());
  CHECK(manifest.find("error")->items().empty());
  std::map<std::string, int> files_per_type;
  for (const auto& f : manifest.find("output")->items()) ++files_per_type[f.find("type")->text()];
  CHECK(files_per_type["Observation"] > 1);  // split by size
  std::vector<std::string> lines = source.download(manifest);
  auto expected = source.contents();
  CHECK(lines.size() == expected.size());

  server target("export_round_trip_target");
  CHECK(target.contents().empty());
  auto loaded = target.call("POST", "/fhir/$import", {{"Content-Type", "application/fhir+ndjson"}}, join_lines(lines));
  REQUIRE_MESSAGE(loaded.status == 200, loaded.body);
  CHECK(loaded.body.find(std::to_string(lines.size()) + " lines: " + std::to_string(lines.size()) +
                         " created, 0 updated, 0 rejected") != std::string::npos);
  auto copied = target.contents();
  CHECK(copied.size() == expected.size());
  std::size_t differing = 0;
  for (const auto& [key, content] : expected) {
    auto it = copied.find(key);
    if (it == copied.end() || it->second != content) {
      if (++differing <= 3)
        MESSAGE(key << " differs:\n" << content << "\n" << (it == copied.end() ? "(missing)" : it->second));
    }
  }
  CHECK(differing == 0);

  // Loading the same export again updates every resource and creates none.
  auto again = target.call("POST", "/fhir/$import", {{"Content-Type", "application/fhir+ndjson"}}, join_lines(lines));
  CHECK(again.body.find("0 created, " + std::to_string(lines.size()) + " updated") != std::string::npos);
}

TEST_CASE("$export at Patient and Group level holds only those patients' compartments; _type and _since filter") {
  server s("export_levels");
  s.put("Practitioner", "doc", R"({"resourceType":"Practitioner","name":[{"family":"Zhang"}]})");
  s.load_patients(1, 4, 2);
  s.put("Group", "g", R"({"resourceType":"Group","type":"person","actual":true,
                          "member":[{"entity":{"reference":"Patient/p1"}},{"entity":{"reference":"Patient/p3"}}]})");

  auto patient_level = server::keys_of(s.download(s.complete(s.kickoff("/fhir/Patient/$export"))));
  CHECK(patient_level.count("Practitioner/doc") == 0);
  CHECK(patient_level.count("Patient/p4") == 1);
  CHECK(patient_level.count("Observation/p2-o1") == 1);
  CHECK(patient_level.count("Group/g") == 1);  // Group is in the Patient compartment (member)
  CHECK(patient_level.size() == 4 + 8 + 1);

  auto group_level = server::keys_of(s.download(s.complete(s.kickoff("/fhir/Group/g/$export"))));
  CHECK(group_level == keys{"Patient/p1", "Patient/p3", "Observation/p1-o0", "Observation/p1-o1", "Observation/p3-o0",
                            "Observation/p3-o1", "Group/g"});

  auto typed = server::keys_of(s.download(s.complete(s.kickoff("/fhir/Group/g/$export?_type=Patient"))));
  CHECK(typed == keys{"Patient/p1", "Patient/p3"});

  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto before = s.complete(s.kickoff("/fhir/$export?_type=Practitioner"));
  std::string since = before.find("transactionTime")->text();
  s.put(
      "Observation", "p2-o0",
      R"({"resourceType":"Observation","status":"amended","code":{"text":"x"},"subject":{"reference":"Patient/p2"}})");
  auto changed = server::keys_of(s.download(s.complete(s.kickoff("/fhir/$export?_since=" + since))));
  CHECK(changed == keys{"Observation/p2-o0"});
}

TEST_CASE("$export cancel: DELETE on the status URL removes the job and its files; expired jobs are deleted") {
  server s("export_cancel");
  s.put("Practitioner", "doc", R"({"resourceType":"Practitioner","name":[{"family":"Zhang"}]})");
  s.load_patients(1, 2, 1);

  std::string queued = s.kickoff("/fhir/$export");
  CHECK(s.call("DELETE", queued).status == 202);
  CHECK(s.call("GET", queued).status == 404);
  CHECK(s.call("DELETE", queued).status == 404);
  CHECK_FALSE(s.runner.run_once());

  std::string finished = s.kickoff("/fhir/$export");
  fhir::value manifest = s.complete(finished);
  std::string file_url = manifest.find("output")->items().at(0).find("url")->text().substr(host.size());
  CHECK(s.call("GET", file_url).status == 200);
  CHECK(s.call("DELETE", finished).status == 202);
  CHECK(s.call("GET", file_url).status == 404);

  std::string expiring = s.kickoff("/fhir/$export");
  s.complete(expiring);
  CHECK(s.runner.remove_expired() == 0);
  s.sql("UPDATE export_job SET expires_at = now() - interval '1 second'");
  CHECK(s.runner.remove_expired() == 1);
  CHECK(s.call("GET", expiring).status == 404);
  pqxx::connection c(s.url);
  pqxx::read_transaction tx(c);
  CHECK(tx.exec("SELECT count(*) FROM export_file")[0][0].as<int>() == 0);
}

TEST_CASE("$export: a job whose runner died is taken over once its lease expires, its partial files discarded") {
  server s("export_takeover");
  s.load_patients(1, 3, 2);
  std::string status = s.kickoff("/fhir/Patient/$export");
  std::string job = status.substr(status.rfind('/') + 1);
  // Another gateway claimed it, wrote a partial file and died.
  s.sql(
      "UPDATE export_job SET status = 'running', leased_by = 'dead-runner', leased_until = now() + interval '1 hour', "
      "progress = '3 resources written (Patient)'");
  s.sql("INSERT INTO export_file (tenant, job_id, file_no, res_type, line_count, body) VALUES ('default', '" + job +
        "', 1, 'Patient', 1, '{\"resourceType\":\"Patient\",\"id\":\"partial\"}\n')");
  CHECK_FALSE(s.runner.run_once());  // the lease still holds
  auto running = s.call("GET", status);
  CHECK(running.status == 202);
  CHECK(running.header("X-Progress") == "3 resources written (Patient)");

  s.sql("UPDATE export_job SET leased_until = now() - interval '1 second'");
  CHECK(s.runner.run_once());
  auto done = s.call("GET", status);
  REQUIRE_MESSAGE(done.status == 200, done.body);
  auto exported = server::keys_of(s.download(test::parse_json_or_fail(done.body)));
  CHECK(exported.size() == 3 + 6);
  CHECK(exported.count("Patient/partial") == 0);

  // A failed job answers 500 with an OperationOutcome.
  s.put("Group", "g", R"({"resourceType":"Group","type":"person","actual":true})");
  std::string group_status = s.kickoff("/fhir/Group/g/$export");
  REQUIRE(s.call("DELETE", "/fhir/Group/g").status < 300);
  CHECK(s.runner.run_once());
  auto failed = s.call("GET", group_status);
  CHECK(failed.status == 500);
  CHECK(failed.body.find("Group/g no longer exists") != std::string::npos);
}

TEST_CASE("$import: per-line errors with their line numbers, the valid lines kept") {
  server s("bulk_import");
  std::string body =
      R"({"resourceType":"Patient","id":"a","name":[{"family":"Li"}]})"
      "\n"
      "\n"
      R"({"resourceType":"Patient","id":"b","birthDate":"not-a-date"})"
      "\n"
      R"(this is not json)"
      "\n"
      R"({"resourceType":"Patient","name":[{"family":"no id"}]})"
      "\n"
      R"({"resourceType":"Nonsense","id":"x"})"
      "\n"
      R"({"resourceType":"Observation","id":"o","status":"final","code":{"text":"t"},"subject":{"reference":"Patient/a"}})"
      "\r\n"
      R"({"resourceType":"Patient","id":"a","name":[{"family":"Li"},{"family":"李"}]})";
  auto res = s.call("POST", "/fhir/$import", {{"Content-Type", "application/fhir+ndjson"}}, body);
  REQUIRE_MESSAGE(res.status == 200, res.body);
  fhir::value outcome = test::parse_json_or_fail(res.body);
  std::map<std::string, std::string> errors;
  for (const auto& issue : outcome.find("issue")->items()) {
    if (issue.find("severity")->text() != "error") continue;
    REQUIRE(issue.find("location"));
    errors[issue.find("location")->items().at(0).text()] += issue.find("diagnostics")->text();
  }
  CHECK(errors.size() == 4);
  CHECK(errors["line 3"].find("Patient/b") != std::string::npos);
  CHECK(errors["line 4"].find("JSON") != std::string::npos);
  CHECK(errors["line 5"].find("id") != std::string::npos);
  CHECK(errors.count("line 6") == 1);
  CHECK(res.body.find("7 lines: 2 created, 1 updated, 4 rejected") != std::string::npos);
  auto a = s.call("GET", "/fhir/Patient/a");
  CHECK(a.body.find("李") != std::string::npos);  // the later line wins
  CHECK(s.call("GET", "/fhir/Observation/o").status == 200);
  CHECK(s.call("GET", "/fhir/Patient/b").status == 404);

  CHECK(s.call("POST", "/fhir/$import", {{"Content-Type", "application/fhir+json"}}, body).status == 415);
  CHECK(s.call("POST", "/fhir/$import", {{"Content-Type", "application/fhir+ndjson"}}, "\n\n").status == 400);
}

TEST_CASE("$export: runners of several gateways sharing the database run each job exactly once") {
  server s("export_shared_runners");
  s.load_patients(1, 2, 1);
  std::vector<std::string> statuses;
  for (int i = 0; i < 6; ++i) statuses.push_back(s.kickoff("/fhir/$export"));
  gateway::export_runner other(s.url, server::small_files());
  std::atomic<int> runs{0};
  auto drain = [&runs](gateway::export_runner& runner) {
    while (runner.run_once()) ++runs;
  };
  std::thread first(drain, std::ref(s.runner));
  std::thread second(drain, std::ref(other));
  first.join();
  second.join();
  CHECK(runs == 6);
  for (const auto& status : statuses) {
    auto done = s.call("GET", status);
    REQUIRE(done.status == 200);
    CHECK(server::keys_of(s.download(test::parse_json_or_fail(done.body))).size() == 4);
  }
}

TEST_CASE("$export: a resource larger than the file limit gets a file of its own and comes back whole") {
  server s("export_large_resource");
  std::string data;
  for (int i = 0; i < 50'000; ++i) data += "QUJD";  // 200 kB of base64 in one attachment
  s.put("Patient", "p1", R"({"resourceType":"Patient","name":[{"family":"Wang"}]})");
  s.put("DocumentReference", "scan",
        R"({"resourceType":"DocumentReference","status":"current","subject":{"reference":"Patient/p1"},
            "content":[{"attachment":{"contentType":"application/pdf","data":")" +
            data + R"("}}]})");
  s.put("DocumentReference", "note",
        R"({"resourceType":"DocumentReference","status":"current","subject":{"reference":"Patient/p1"},
            "content":[{"attachment":{"contentType":"text/plain","data":"aGVsbG8="}}]})");
  fhir::value manifest = s.complete(s.kickoff("/fhir/Patient/$export?_type=DocumentReference"));
  REQUIRE(manifest.find("output")->items().size() == 2);
  for (const auto& file : manifest.find("output")->items()) CHECK(file.find("count")->text() == "1");
  auto lines = s.download(manifest);
  REQUIRE(lines.size() == 2);
  std::size_t whole = 0;
  for (const auto& line : lines)
    if (line.find(data) != std::string::npos) ++whole;
  CHECK(whole == 1);
}

TEST_CASE("$export: a runner that stops (gateway shutdown) hands its job back to the queue") {
  server s("export_hand_back");
  s.load_patients(1, 3, 2);
  std::string status = s.kickoff("/fhir/$export");
  s.runner.stop();  // as on SIGTERM: the job it claims next is handed back after one batch
  CHECK(s.runner.run_once());
  auto queued = s.call("GET", status);
  CHECK(queued.status == 202);
  CHECK(queued.header("X-Progress") == "queued");
  pqxx::connection c(s.url);
  {
    pqxx::read_transaction tx(c);
    CHECK(tx.exec("SELECT count(*) FROM export_file")[0][0].as<int>() == 0);
  }
  gateway::export_runner next_gateway(s.url, server::small_files());
  CHECK(next_gateway.run_once());
  auto done = s.call("GET", status);
  REQUIRE(done.status == 200);
  CHECK(server::keys_of(s.download(test::parse_json_or_fail(done.body))).size() == 9);
}
