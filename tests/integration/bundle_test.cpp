// Transaction and batch Bundles through fhir_api::handle against a real PostgreSQL: atomicity,
// processing order, urn:uuid resolution, conditional creates/updates/references, batch entries
// failing on their own, limits.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "test_database.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"

using namespace yilian;
using gateway::http_request;
using gateway::http_response;

namespace {

struct bundle_fixture {
  gateway::resource_store store;
  gateway::fhir_api api;

  explicit bundle_fixture(std::size_t max_entries = 20000)
      : store(test::fresh_database_url("bundles"), 4), api(store, options(max_entries)) {
    store.migrate();
  }

  static gateway::fhir_api_options options(std::size_t max_entries) {
    gateway::fhir_api_options o;
    o.base_url = "http://test.local/fhir";
    o.max_bundle_entries = max_entries;
    return o;
  }

  http_response call(std::string method, std::string target, std::string body = {},
                     std::vector<gateway::http_header> headers = {}) {
    http_request req;
    req.method = std::move(method);
    req.target = std::move(target);
    req.body = std::move(body);
    req.headers = std::move(headers);
    if (!req.body.empty()) req.headers.push_back({"Content-Type", "application/fhir+json"});
    return api.handle(req);
  }

  // Number of current resources of `type` matching `query`.
  long count(const std::string& type, const std::string& query = {}) {
    auto r = call("GET", "/fhir/" + type + "?_summary=count&_total=accurate" + (query.empty() ? "" : "&" + query));
    REQUIRE(r.status == 200);
    fhir::value v;
    fhir::issue_list issues;
    REQUIRE(fhir::parse_json(r.body, v, issues));
    return std::stol(v.find("total")->text());
  }
};

fhir::value parse(const std::string& json) {
  fhir::value v;
  fhir::issue_list issues;
  REQUIRE_MESSAGE(fhir::parse_json(json, v, issues), json);
  return v;
}

const fhir::value& entry(const fhir::value& bundle, std::size_t i) { return bundle.find("entry")->items().at(i); }

std::string status_of(const fhir::value& bundle, std::size_t i) {
  return entry(bundle, i).find("response")->find("status")->text();
}

// "http://test.local/fhir/Patient/abc/_history/1" -> "Patient/abc"
std::string reference_of_location(const std::string& location) {
  std::string rest = location.substr(std::string("http://test.local/fhir/").size());
  return rest.substr(0, rest.find("/_history"));
}

std::string patient(const std::string& mrn, const std::string& family = "王") {
  return R"({"resourceType":"Patient","identifier":[{"system":"http://hospital.example/mrn","value":")" + mrn +
         R"("}],"name":[{"family":")" + family + R"("}],"gender":"female"})";
}

std::string observation(const std::string& subject_reference, const std::string& code = "2823-3") {
  return R"({"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":")" +
         code + R"("}]},"subject":{"reference":")" + subject_reference + R"("},"valueQuantity":{"value":4.2,"unit":"mmol/L"}})";
}

std::string bundle(const std::string& type, const std::vector<std::string>& entries) {
  std::string out = R"({"resourceType":"Bundle","type":")" + type + R"(","entry":[)";
  for (std::size_t i = 0; i < entries.size(); ++i) out += (i ? "," : "") + entries[i];
  return out + "]}";
}

std::string entry_json(const std::string& method, const std::string& url, const std::string& resource = {},
                       const std::string& full_url = {}, const std::string& extra_request = {}) {
  std::string out = "{";
  if (!full_url.empty()) out += R"("fullUrl":")" + full_url + R"(",)";
  if (!resource.empty()) out += R"("resource":)" + resource + ",";
  out += R"("request":{"method":")" + method + R"(","url":")" + url + "\"" + extra_request + "}}";
  return out;
}

}  // namespace

TEST_CASE("transaction: urn:uuid references resolve in any order, and the response lists every entry") {
  bundle_fixture f;
  const std::string patient_urn = "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0";
  // The Observation comes first and refers forward to the Patient created later in the Bundle.
  auto r = f.call("POST", "/fhir",
                  bundle("transaction", {entry_json("POST", "Observation", observation(patient_urn),
                                                    "urn:uuid:7f9c0a51-3b8d-4a51-9a53-61a1b1a7e001"),
                                         entry_json("POST", "Patient", patient("MRN-1"), patient_urn)}));
  REQUIRE_MESSAGE(r.status == 200, r.body);
  auto response = parse(r.body);
  CHECK(response.find("type")->text() == "transaction-response");
  REQUIRE(response.find("entry")->items().size() == 2);
  CHECK(status_of(response, 0) == "201 Created");
  CHECK(status_of(response, 1) == "201 Created");
  std::string patient_ref = reference_of_location(entry(response, 1).find("response")->find("location")->text());
  std::string observation_ref = reference_of_location(entry(response, 0).find("response")->find("location")->text());
  CHECK(entry(response, 0).find("response")->find("etag")->text() == "W/\"1\"");
  CHECK_FALSE(entry(response, 0).find("response")->find("lastModified")->text().empty());

  auto obs = parse(f.call("GET", "/fhir/" + observation_ref).body);
  CHECK(obs.find("subject")->find("reference")->text() == patient_ref);
  // The stored reference is searchable like any other.
  CHECK(f.count("Observation", "subject=" + patient_ref) == 1);
}

TEST_CASE("transaction: a failing entry rolls back every other entry and is named in the OperationOutcome") {
  bundle_fixture f;
  REQUIRE(f.call("PUT", "/fhir/Patient/keep", R"({"resourceType":"Patient","id":"keep","gender":"male"})").status == 201);

  // Entry 2 is invalid (an unknown element): the created Patient, the update and the delete must vanish.
  auto r = f.call("POST", "/fhir",
                  bundle("transaction", {entry_json("POST", "Patient", patient("MRN-ROLLBACK")),
                                         entry_json("PUT", "Patient/keep",
                                                    R"({"resourceType":"Patient","id":"keep","gender":"female"})"),
                                         entry_json("POST", "Observation", R"({"resourceType":"Observation","status":"final","code":{"text":"x"},"bogus":1})"),
                                         entry_json("DELETE", "Patient/keep")}));
  CHECK(r.status == 400);
  CHECK(r.body.find("OperationOutcome") != std::string::npos);
  CHECK_MESSAGE(r.body.find("Bundle.entry[2]") != std::string::npos, r.body);
  CHECK(f.count("Patient", "identifier=http://hospital.example/mrn|MRN-ROLLBACK") == 0);
  auto kept = parse(f.call("GET", "/fhir/Patient/keep").body);
  CHECK(kept.find("gender")->text() == "male");
  CHECK(kept.find("meta")->find("versionId")->text() == "1");

  // A failure found while running (If-Match on a stale version) also names its entry and rolls back.
  r = f.call("POST", "/fhir",
             bundle("transaction", {entry_json("POST", "Patient", patient("MRN-ROLLBACK-2")),
                                    entry_json("PUT", "Patient/keep",
                                               R"({"resourceType":"Patient","id":"keep","gender":"other"})", {},
                                               R"(,"ifMatch":"W/\"7\"")")}));
  CHECK(r.status == 412);
  CHECK_MESSAGE(r.body.find("Bundle.entry[1]") != std::string::npos, r.body);
  CHECK(f.count("Patient", "identifier=http://hospital.example/mrn|MRN-ROLLBACK-2") == 0);
  CHECK(parse(f.call("GET", "/fhir/Patient/keep").body).find("gender")->text() == "male");

  // A reference to a urn:uuid that no entry carries is an error, not a dangling reference.
  r = f.call("POST", "/fhir",
             bundle("transaction", {entry_json("POST", "Observation",
                                               observation("urn:uuid:00000000-0000-4000-8000-000000000000"))}));
  CHECK(r.status == 400);
  CHECK(f.count("Observation") == 0);
}

TEST_CASE("transaction: conditional create, conditional update and conditional references") {
  bundle_fixture f;
  auto existing = f.call("POST", "/fhir/Patient", patient("MRN-EXISTING", "李"));
  REQUIRE(existing.status == 201);
  const std::string urn = "urn:uuid:9d6f2c3a-5a3e-4a8f-8f52-8e7f0d5e1a11";
  auto r = f.call(
      "POST", "/fhir",
      bundle("transaction",
             {// ifNoneExist matches: nothing is created and the urn resolves to the existing Patient.
              entry_json("POST", "Patient", patient("MRN-EXISTING", "李"), urn,
                         R"(,"ifNoneExist":"identifier=http://hospital.example/mrn|MRN-EXISTING")"),
              entry_json("POST", "Observation", observation(urn)),
              // A conditional reference to a Patient created earlier in the same Bundle.
              entry_json("POST", "Patient", patient("MRN-NEW", "赵")),
              entry_json("POST", "Observation", observation("Patient?identifier=http://hospital.example/mrn|MRN-NEW", "718-7")),
              // Conditional update: no match creates.
              entry_json("PUT", "Patient?identifier=http://hospital.example/mrn|MRN-PUT", patient("MRN-PUT", "钱"))}));
  REQUIRE_MESSAGE(r.status == 200, r.body);
  auto response = parse(r.body);
  CHECK(status_of(response, 0) == "200 OK");
  std::string existing_ref = reference_of_location(std::string(existing.header("Location")));
  CHECK(reference_of_location(entry(response, 0).find("response")->find("location")->text()) == existing_ref);
  CHECK(f.count("Patient", "identifier=http://hospital.example/mrn|MRN-EXISTING") == 1);
  CHECK(f.count("Observation", "subject=" + existing_ref) == 1);
  CHECK(f.count("Observation", "code=718-7&subject.identifier=http://hospital.example/mrn|MRN-NEW") == 1);
  CHECK(status_of(response, 4) == "201 Created");

  // The same conditional update again updates the one match.
  r = f.call("POST", "/fhir",
             bundle("transaction", {entry_json("PUT", "Patient?identifier=http://hospital.example/mrn|MRN-PUT",
                                               patient("MRN-PUT", "孙"))}));
  REQUIRE_MESSAGE(r.status == 200, r.body);
  CHECK(status_of(parse(r.body), 0) == "200 OK");
  CHECK(f.count("Patient", "identifier=http://hospital.example/mrn|MRN-PUT") == 1);
  CHECK(f.count("Patient", "family=孙") == 1);

  // A conditional reference matching nothing fails the transaction with 412.
  r = f.call("POST", "/fhir",
             bundle("transaction", {entry_json("POST", "Observation",
                                               observation("Patient?identifier=http://hospital.example/mrn|NOBODY"))}));
  CHECK(r.status == 412);
  CHECK(r.body.find("Bundle.entry[0]") != std::string::npos);
}

TEST_CASE("transaction: DELETE, POST, PUT, GET order; reads see the transaction's own writes; one change per resource") {
  bundle_fixture f;
  REQUIRE(f.call("PUT", "/fhir/Patient/old", R"({"resourceType":"Patient","id":"old"})").status == 201);
  REQUIRE(f.call("PUT", "/fhir/Patient/p1", R"({"resourceType":"Patient","id":"p1","gender":"male"})").status == 201);
  std::string json_patch = R"([{"op":"replace","path":"/gender","value":"female"}])";
  // base64 of json_patch, as a Binary carries it.
  std::string encoded = "W3sib3AiOiJyZXBsYWNlIiwicGF0aCI6Ii9nZW5kZXIiLCJ2YWx1ZSI6ImZlbWFsZSJ9XQ==";
  auto r = f.call(
      "POST", "/fhir",
      bundle("transaction",
             {entry_json("GET", "Patient?identifier=http://hospital.example/mrn|MRN-ORDER"),  // runs last
              entry_json("PATCH", "Patient/p1",
                         R"({"resourceType":"Binary","contentType":"application/json-patch+json","data":")" + encoded + "\"}"),
              entry_json("POST", "Patient", patient("MRN-ORDER")),
              entry_json("DELETE", "Patient/old")}));
  REQUIRE_MESSAGE(r.status == 200, r.body);
  (void)json_patch;
  auto response = parse(r.body);
  CHECK(status_of(response, 0) == "200 OK");
  const fhir::value* found = entry(response, 0).find("resource");
  REQUIRE(found);
  CHECK(found->find("total")->text() == "1");  // the POST ran before the GET
  CHECK(status_of(response, 1) == "200 OK");
  CHECK(parse(f.call("GET", "/fhir/Patient/p1").body).find("gender")->text() == "female");
  CHECK(f.call("GET", "/fhir/Patient/old").status == 410);

  r = f.call("POST", "/fhir",
             bundle("transaction", {entry_json("PUT", "Patient/p1", R"({"resourceType":"Patient","id":"p1"})"),
                                    entry_json("DELETE", "Patient/p1")}));
  CHECK(r.status == 400);
  CHECK(r.body.find("only once") != std::string::npos);
}

TEST_CASE("batch: entries succeed or fail on their own, each with its status or OperationOutcome") {
  bundle_fixture f;
  auto r = f.call("POST", "/fhir",
                  bundle("batch", {entry_json("POST", "Patient", patient("MRN-B1")),
                                   entry_json("POST", "Observation", R"({"resourceType":"Observation","status":"bogus","code":{"text":"x"}})"),
                                   entry_json("GET", "Patient/does-not-exist"),
                                   entry_json("POST", "Observation", observation("urn:uuid:6a1f7d0e-1111-4aaa-8bbb-222233334444")),
                                   entry_json("PUT", "Patient/b2", R"({"resourceType":"Patient","id":"b2"})")}));
  REQUIRE_MESSAGE(r.status == 200, r.body);
  auto response = parse(r.body);
  CHECK(response.find("type")->text() == "batch-response");
  CHECK(status_of(response, 0) == "201 Created");
  CHECK(status_of(response, 1).starts_with("400"));
  CHECK(entry(response, 1).find("response")->find("outcome"));
  CHECK(status_of(response, 2).starts_with("404"));
  CHECK(status_of(response, 3).starts_with("400"));  // batch entries cannot refer to each other
  CHECK(status_of(response, 4) == "201 Created");
  CHECK(f.count("Patient") == 2);
  CHECK(f.count("Observation") == 0);
}

TEST_CASE("bundles: wrong type, missing request, too many entries") {
  bundle_fixture f(3);
  CHECK(f.call("POST", "/fhir", bundle("collection", {})).status == 400);
  CHECK(f.call("POST", "/fhir", R"({"resourceType":"Patient"})").status == 400);
  auto r = f.call("POST", "/fhir", R"({"resourceType":"Bundle","type":"transaction","entry":[{"resource":)" +
                                       patient("X") + "}]}");
  CHECK(r.status == 400);
  CHECK(r.body.find("Bundle.entry[0]") != std::string::npos);
  std::vector<std::string> four(4, entry_json("POST", "Patient", patient("MANY")));
  r = f.call("POST", "/fhir", bundle("transaction", four));
  CHECK(r.status == 413);
  CHECK(r.body.find("at most 3") != std::string::npos);
  CHECK(f.count("Patient") == 0);
}

TEST_CASE("transaction: 10,000 entries commit together, every resource indexed") {
  bundle_fixture f;
  std::vector<std::string> entries;
  for (int i = 0; i < 5000; ++i) {
    std::string urn = "urn:uuid:00000000-0000-4000-8000-" + std::string(12 - std::to_string(i).size(), '0') + std::to_string(i);
    entries.push_back(entry_json("POST", "Patient", patient("BULK-" + std::to_string(i)), urn));
    entries.push_back(entry_json("POST", "Observation", observation(urn)));
  }
  auto r = f.call("POST", "/fhir", bundle("transaction", entries));
  REQUIRE(r.status == 200);
  CHECK(f.count("Patient") == 5000);
  CHECK(f.count("Observation") == 5000);
  auto found = parse(f.call("GET", "/fhir/Patient?identifier=http://hospital.example/mrn|BULK-4321").body);
  REQUIRE(found.find("entry"));
  std::string id = found.find("entry")->items()[0].find("resource")->find("id")->text();
  CHECK(f.count("Observation", "subject=Patient/" + id) == 1);
}
