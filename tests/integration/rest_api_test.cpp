// The FHIR REST interactions end to end against a real PostgreSQL, through fhir_api::handle
// (no socket): statuses, headers, negotiation, conditional interactions and errors.
#include <doctest/doctest.h>

#include <atomic>
#include <set>
#include <thread>

#include "test_database.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/fhir/xml.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"

using namespace yilian;
using gateway::http_request;
using gateway::http_response;

namespace {

struct api_fixture {
  gateway::resource_store store;
  gateway::fhir_api api;

  api_fixture() : store(test::fresh_database_url("rest_api"), 8), api(store, make_options()) { store.migrate(); }

  static gateway::fhir_api_options make_options() {
    gateway::fhir_api_options o;
    o.base_url = "http://test.local/fhir";
    return o;
  }

  http_response call(std::string method, std::string target, std::string body = {},
                     std::vector<gateway::http_header> headers = {}) {
    http_request req;
    req.method = std::move(method);
    req.target = std::move(target);
    req.body = std::move(body);
    req.headers = std::move(headers);
    if (!req.body.empty() && req.header("Content-Type").empty())
      req.headers.push_back({"Content-Type", "application/fhir+json"});
    return api.handle(req);
  }
};

api_fixture& fixture() {
  static api_fixture f;
  return f;
}

fhir::value parse(const std::string& json) {
  fhir::value v;
  fhir::issue_list issues;
  REQUIRE_MESSAGE(fhir::parse_json(json, v, issues), json);
  return v;
}

std::string text_at(const fhir::value& v, std::initializer_list<std::string_view> path) {
  const fhir::value* cur = &v;
  for (auto p : path) {
    if (!cur) return {};
    if (cur->is_array()) {
      std::size_t i = std::stoul(std::string(p));
      cur = i < cur->items().size() ? &cur->items()[i] : nullptr;
    } else {
      cur = cur->find(p);
    }
  }
  return cur ? cur->text() : std::string();
}

const std::string patient_json =
    R"({"resourceType":"Patient","identifier":[{"system":"urn:oid:2.16.156.10011.1.3","value":"500103195207304518"}],)"
    R"("name":[{"text":"陈国华","family":"陈","given":["国华"]}],"gender":"male","birthDate":"1952-07-30"})";

}  // namespace

TEST_CASE("create, read, vread, update, delete and history") {
  auto& f = fixture();
  auto created = f.call("POST", "/fhir/Patient", patient_json);
  REQUIRE(created.status == 201);
  std::string location(created.header("Location"));
  REQUIRE(location.starts_with("http://test.local/fhir/Patient/"));
  CHECK(location.ends_with("/_history/1"));
  CHECK(created.header("ETag") == "W/\"1\"");
  CHECK_FALSE(created.header("Last-Modified").empty());
  auto body = parse(created.body);
  std::string id = text_at(body, {"id"});
  CHECK(text_at(body, {"meta", "versionId"}) == "1");
  CHECK(text_at(body, {"name", "0", "text"}) == "陈国华");

  auto read = f.call("GET", "/fhir/Patient/" + id);
  CHECK(read.status == 200);
  CHECK(read.body == created.body);  // the stored bytes, served as they are
  CHECK(read.header("Content-Type") == "application/fhir+json;charset=utf-8");

  // Update: the id must be in the body and match the URL.
  auto updated_resource = parse(read.body);
  updated_resource.set("birthDate", fhir::value::make_string("1952-07-31"));
  auto updated = f.call("PUT", "/fhir/Patient/" + id, fhir::to_json(updated_resource));
  CHECK(updated.status == 200);
  CHECK(updated.header("ETag") == "W/\"2\"");
  CHECK(text_at(parse(updated.body), {"birthDate"}) == "1952-07-31");

  auto v1 = f.call("GET", "/fhir/Patient/" + id + "/_history/1");
  CHECK(v1.status == 200);
  CHECK(text_at(parse(v1.body), {"birthDate"}) == "1952-07-30");
  CHECK(f.call("GET", "/fhir/Patient/" + id + "/_history/9").status == 404);
  CHECK(f.call("GET", "/fhir/Patient/" + id + "/_history/x").status == 400);

  auto deleted = f.call("DELETE", "/fhir/Patient/" + id);
  CHECK(deleted.status == 200);
  auto gone = f.call("GET", "/fhir/Patient/" + id);
  CHECK(gone.status == 410);
  CHECK(text_at(parse(gone.body), {"issue", "0", "code"}) == "deleted");
  CHECK(f.call("DELETE", "/fhir/Patient/" + id).status == 200);  // idempotent

  auto history = f.call("GET", "/fhir/Patient/" + id + "/_history");
  REQUIRE(history.status == 200);
  auto bundle = parse(history.body);
  CHECK(text_at(bundle, {"type"}) == "history");
  CHECK(text_at(bundle, {"total"}) == "3");
  CHECK(text_at(bundle, {"entry", "0", "request", "method"}) == "DELETE");
  CHECK(text_at(bundle, {"entry", "1", "request", "method"}) == "PUT");
  CHECK(text_at(bundle, {"entry", "2", "request", "method"}) == "POST");
  CHECK(text_at(bundle, {"entry", "2", "resource", "birthDate"}) == "1952-07-30");

  // Updating a deleted resource brings it back as a new version (201: created again, as HAPI does).
  updated_resource.erase("meta");
  auto revived = f.call("PUT", "/fhir/Patient/" + id, fhir::to_json(updated_resource));
  CHECK(revived.status == 201);
  CHECK(revived.header("ETag") == "W/\"4\"");
}

TEST_CASE("update creates a resource with a client id; mismatched ids are rejected") {
  auto& f = fixture();
  auto body = parse(patient_json);
  body.set("id", fhir::value::make_string("client-chosen-1"));
  auto r = f.call("PUT", "/fhir/Patient/client-chosen-1", fhir::to_json(body));
  CHECK(r.status == 201);
  CHECK(f.call("PUT", "/fhir/Patient/client-chosen-1", fhir::to_json(body)).status == 200);
  auto mismatch = f.call("PUT", "/fhir/Patient/other-id", fhir::to_json(body));
  CHECK(mismatch.status == 400);
  CHECK(text_at(parse(mismatch.body), {"issue", "0", "expression", "0"}) == "Patient.id");
  body.erase("id");
  CHECK(f.call("PUT", "/fhir/Patient/client-chosen-1", fhir::to_json(body)).status == 400);
  CHECK(f.call("PUT", "/fhir/Patient/bad_id!", fhir::to_json(body)).status == 400);
}

TEST_CASE("If-Match: a stale version gets 412, the current one succeeds") {
  auto& f = fixture();
  auto created = parse(f.call("POST", "/fhir/Patient", patient_json).body);
  std::string id = text_at(created, {"id"});
  CHECK(f.call("PUT", "/fhir/Patient/" + id, fhir::to_json(created), {{"If-Match", "W/\"1\""}}).status == 200);
  auto stale = f.call("PUT", "/fhir/Patient/" + id, fhir::to_json(created), {{"If-Match", "W/\"1\""}});
  CHECK(stale.status == 412);
  CHECK(text_at(parse(stale.body), {"resourceType"}) == "OperationOutcome");
  CHECK(f.call("PUT", "/fhir/Patient/" + id, fhir::to_json(created), {{"If-Match", "garbage"}}).status == 400);
  CHECK(f.call("DELETE", "/fhir/Patient/" + id, "", {{"If-Match", "W/\"1\""}}).status == 412);
}

TEST_CASE("concurrent updates with If-Match never lose a version") {
  auto& f = fixture();
  auto created = parse(f.call("POST", "/fhir/Patient", patient_json).body);
  std::string id = text_at(created, {"id"});
  constexpr int threads = 8, rounds = 10;
  std::atomic<int> successes{0}, conflicts{0}, other{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (int i = 0; i < rounds; ++i) {
        auto current = f.call("GET", "/fhir/Patient/" + id);
        auto body = parse(current.body);
        body.set("gender", fhir::value::make_string((t + i) % 2 ? "female" : "male"));
        auto r = f.call("PUT", "/fhir/Patient/" + id, fhir::to_json(body),
                        {{"If-Match", std::string(current.header("ETag"))}});
        if (r.status == 200) ++successes;
        else if (r.status == 412) ++conflicts;
        else ++other;
      }
    });
  for (auto& t : pool) t.join();
  CHECK(other == 0);
  CHECK(successes + conflicts == threads * rounds);
  CHECK(successes >= rounds);
  // Every successful update is one version, contiguous, none lost.
  auto history = parse(f.call("GET", "/fhir/Patient/" + id + "/_history?_count=1000").body);
  CHECK(text_at(history, {"total"}) == std::to_string(successes + 1));
  std::set<std::string> versions;
  for (const auto& e : history.find("entry")->items()) versions.insert(e.find("response")->find("etag")->text());
  CHECK(versions.size() == static_cast<std::size_t>(successes + 1));
}

TEST_CASE("conditional create: concurrent identical If-None-Exist create exactly one resource") {
  auto& f = fixture();
  std::string body = R"({"resourceType":"Patient","identifier":[{"system":"urn:oid:2.16.156.10011.1.12","value":"ZY-RACE-1"}]})";
  constexpr int threads = 12;
  std::atomic<int> created{0}, existing{0}, other{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      auto r = f.call("POST", "/fhir/Patient", body,
                      {{"If-None-Exist", "identifier=urn:oid:2.16.156.10011.1.12|ZY-RACE-1"}});
      if (r.status == 201) ++created;
      else if (r.status == 200) ++existing;
      else ++other;
    });
  for (auto& t : pool) t.join();
  CHECK(created == 1);
  CHECK(existing == threads - 1);
  CHECK(other == 0);
  auto search = parse(f.call("GET", "/fhir/Patient?identifier=urn:oid:2.16.156.10011.1.12|ZY-RACE-1").body);
  CHECK(text_at(search, {"total"}) == "1");
}

TEST_CASE("conditional update and delete by identifier") {
  auto& f = fixture();
  std::string body = R"({"resourceType":"Patient","identifier":[{"system":"urn:oid:2.16.156.10011.1.12","value":"ZY-COND-1"}],"gender":"female"})";
  auto first = f.call("PUT", "/fhir/Patient?identifier=urn:oid:2.16.156.10011.1.12|ZY-COND-1", body);
  CHECK(first.status == 201);
  auto second = f.call("PUT", "/fhir/Patient?identifier=urn:oid:2.16.156.10011.1.12|ZY-COND-1", body);
  CHECK(second.status == 200);
  CHECK(second.header("ETag") == "W/\"2\"");
  auto removed = f.call("DELETE", "/fhir/Patient?identifier=urn:oid:2.16.156.10011.1.12|ZY-COND-1");
  CHECK(removed.status == 200);
  auto search = parse(f.call("GET", "/fhir/Patient?identifier=ZY-COND-1").body);
  CHECK(text_at(search, {"total"}) == "0");
  // Unsupported criteria are refused rather than ignored: ignoring them would widen the match.
  CHECK(f.call("DELETE", "/fhir/Patient?nickname=chen").status == 400);
}

TEST_CASE("search by _id and identifier with paging links; unknown parameters reported") {
  auto& f = fixture();
  for (int i = 0; i < 5; ++i) {
    std::string body = R"({"resourceType":"Practitioner","identifier":[{"system":"urn:oid:2.16.156.10011.1.4","value":"PAGE-)" +
                       std::to_string(i) + R"("}]})";
    REQUIRE(f.call("POST", "/fhir/Practitioner", body).status == 201);
  }
  auto page1 = parse(f.call("GET", "/fhir/Practitioner?_count=2").body);
  CHECK(text_at(page1, {"type"}) == "searchset");
  CHECK(page1.find("entry")->items().size() == 2);
  bool has_next = false;
  for (const auto& l : page1.find("link")->items()) has_next |= l.find("relation")->text() == "next";
  CHECK(has_next);
  auto lenient = f.call("GET", "/fhir/Practitioner?foo=bar");
  CHECK(lenient.status == 200);
  CHECK(lenient.body.find("\"mode\":\"outcome\"") != std::string::npos);
  CHECK(f.call("GET", "/fhir/Practitioner?foo=bar", "", {{"Prefer", "handling=strict"}}).status == 400);
  auto by_identifier = parse(f.call("GET", "/fhir/Practitioner?identifier=urn:oid:2.16.156.10011.1.4|PAGE-3").body);
  CHECK(text_at(by_identifier, {"total"}) == "1");
  auto posted = f.call("POST", "/fhir/Practitioner/_search", "identifier=PAGE-3",
                       {{"Content-Type", "application/x-www-form-urlencoded"}});
  CHECK(posted.status == 200);
  CHECK(text_at(parse(posted.body), {"total"}) == "1");
}

TEST_CASE("content negotiation: XML out and in, _pretty, 406 and 415") {
  auto& f = fixture();
  auto created = parse(f.call("POST", "/fhir/Patient", patient_json).body);
  std::string id = text_at(created, {"id"});
  auto xml = f.call("GET", "/fhir/Patient/" + id + "?_format=xml");
  CHECK(xml.status == 200);
  CHECK(xml.header("Content-Type") == "application/fhir+xml;charset=utf-8");
  CHECK(xml.body.find("<Patient xmlns=\"http://hl7.org/fhir\">") != std::string::npos);
  auto via_accept = f.call("GET", "/fhir/Patient/" + id, "", {{"Accept", "application/fhir+xml"}});
  CHECK(via_accept.body == xml.body);
  fhir::value from_xml;
  fhir::issue_list issues;
  REQUIRE(fhir::parse_xml(xml.body, from_xml, issues));
  CHECK(from_xml == created);

  // An XML body is accepted too.
  auto xml_create = f.call("POST", "/fhir/Patient", xml.body, {{"Content-Type", "application/fhir+xml"}});
  CHECK(xml_create.status == 201);

  auto pretty = f.call("GET", "/fhir/Patient/" + id + "?_pretty=true");
  CHECK(pretty.body.find("\n") != std::string::npos);
  CHECK(parse(pretty.body) == created);

  CHECK(f.call("GET", "/fhir/Patient/" + id, "", {{"Accept", "text/csv"}}).status == 406);
  CHECK(f.call("GET", "/fhir/Patient/" + id + "?_format=csv").status == 406);
  CHECK(f.call("GET", "/fhir/Patient/" + id, "", {{"Accept", "text/html, */*;q=0.8"}}).status == 200);
  CHECK(f.call("POST", "/fhir/Patient", patient_json, {{"Content-Type", "text/plain"}}).status == 415);
}

TEST_CASE("Prefer return=minimal and return=OperationOutcome") {
  auto& f = fixture();
  auto minimal = f.call("POST", "/fhir/Patient", patient_json, {{"Prefer", "return=minimal"}});
  CHECK(minimal.status == 201);
  CHECK(minimal.body.empty());
  CHECK_FALSE(minimal.header("Location").empty());
  auto outcome = f.call("POST", "/fhir/Patient", patient_json, {{"Prefer", "return=OperationOutcome"}});
  CHECK(outcome.status == 201);
  CHECK(text_at(parse(outcome.body), {"resourceType"}) == "OperationOutcome");
}

TEST_CASE("JSON Patch: applied atomically, validated, 422 on a failed test") {
  auto& f = fixture();
  auto created = parse(f.call("POST", "/fhir/Patient", patient_json).body);
  std::string id = text_at(created, {"id"});
  std::vector<gateway::http_header> json_patch{{"Content-Type", "application/json-patch+json"}};
  auto patched = f.call("PATCH", "/fhir/Patient/" + id,
                        R"([{"op":"replace","path":"/gender","value":"female"},{"op":"add","path":"/active","value":true}])",
                        json_patch);
  CHECK(patched.status == 200);
  auto body = parse(patched.body);
  CHECK(text_at(body, {"gender"}) == "female");
  CHECK(text_at(body, {"active"}) == "true");
  CHECK(text_at(body, {"meta", "versionId"}) == "2");
  auto failed_test = f.call("PATCH", "/fhir/Patient/" + id, R"([{"op":"test","path":"/gender","value":"male"}])", json_patch);
  CHECK(failed_test.status == 422);
  auto invalid_result = f.call("PATCH", "/fhir/Patient/" + id,
                               R"([{"op":"add","path":"/birthDate","value":"not-a-date"}])", json_patch);
  CHECK(invalid_result.status == 422);
  CHECK(f.call("GET", "/fhir/Patient/" + id).header("ETag") == "W/\"2\"");
  CHECK(f.call("PATCH", "/fhir/Patient/" + id, "[]", {{"Content-Type", "text/plain"}}).status == 415);
  CHECK(f.call("PATCH", "/fhir/Patient/" + id, "[]", {{"Content-Type", "application/json-patch+json"}, {"If-Match", "W/\"1\""}})
            .status == 412);
}

TEST_CASE("errors: every one an OperationOutcome with the right status") {
  auto& f = fixture();
  auto unknown_type = f.call("GET", "/fhir/Patients/1");
  CHECK(unknown_type.status == 404);
  CHECK(text_at(parse(unknown_type.body), {"resourceType"}) == "OperationOutcome");
  CHECK(f.call("GET", "/fhir/Patient/does-not-exist").status == 404);
  CHECK(f.call("PATCH", "/fhir/Patient").status == 405);
  CHECK(f.call("POST", "/fhir/Patient/123", patient_json).status == 405);
  CHECK(f.call("POST", "/fhir/Patient", "{not json").status == 400);
  CHECK(f.call("POST", "/fhir/Patient", "").status == 400);
  CHECK(f.call("POST", "/fhir/Observation", patient_json).status == 400);  // resourceType mismatch
  auto unknown_element = f.call("POST", "/fhir/Patient", R"({"resourceType":"Patient","colour":"blue"})");
  CHECK(unknown_element.status == 400);
  CHECK(unknown_element.body.find("Patient.colour") != std::string::npos);
  auto bad_national_id = f.call(
      "POST", "/fhir/Patient",
      R"({"resourceType":"Patient","identifier":[{"system":"urn:oid:2.16.156.10011.1.3","value":"500103195207304519"}]})");
  CHECK(bad_national_id.status == 422);
  CHECK(bad_national_id.body.find("Patient.identifier[0].value") != std::string::npos);
  CHECK(f.call("GET", "/other/Patient").status == 404);
  // XML error answer when XML was asked for.
  auto xml_error = f.call("GET", "/fhir/Patient/does-not-exist?_format=xml");
  CHECK(xml_error.body.find("<OperationOutcome") != std::string::npos);
}

TEST_CASE("$validate and metadata") {
  auto& f = fixture();
  auto ok = f.call("POST", "/fhir/Patient/$validate", patient_json);
  CHECK(ok.status == 200);
  auto bad = f.call("POST", "/fhir/Patient/$validate", R"({"resourceType":"Patient","gender":"boy"})");
  CHECK(bad.status == 400);
  CHECK(bad.body.find("Patient.gender") != std::string::npos);
  auto meta = f.call("GET", "/fhir/metadata");
  CHECK(meta.status == 200);
  auto cs = parse(meta.body);
  CHECK(text_at(cs, {"resourceType"}) == "CapabilityStatement");
  CHECK(text_at(cs, {"fhirVersion"}) == "4.0.1");
  CHECK(cs.find("rest")->items()[0].find("resource")->items().size() == fhir::definitions::r4().resource_types().size());
}

TEST_CASE("system and type history") {
  auto& f = fixture();
  REQUIRE(f.call("POST", "/fhir/Organization", R"({"resourceType":"Organization","name":"历史测试医院"})").status == 201);
  auto type_history = parse(f.call("GET", "/fhir/Organization/_history").body);
  CHECK(text_at(type_history, {"type"}) == "history");
  CHECK(std::stoi(text_at(type_history, {"total"})) >= 1);
  auto system_history = parse(f.call("GET", "/fhir/_history?_count=3").body);
  CHECK(system_history.find("entry")->items().size() == 3);
  CHECK(f.call("GET", "/fhir/_history?_since=yesterday").status == 400);
  auto since_future = parse(f.call("GET", "/fhir/_history?_since=2999-01-01T00:00:00Z").body);
  CHECK(text_at(since_future, {"total"}) == "0");
}

TEST_CASE("FHIRPath Patch: a Parameters body in JSON or XML") {
  auto& f = fixture();
  auto created = parse(f.call("POST", "/fhir/Patient", patient_json).body);
  std::string id = text_at(created, {"id"});
  std::string replace_birth_date =
      R"({"resourceType":"Parameters","parameter":[{"name":"operation","part":[)"
      R"({"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.birthDate"},)"
      R"({"name":"value","valueDate":"1952-08-01"}]}]})";
  auto patched = f.call("PATCH", "/fhir/Patient/" + id, replace_birth_date, {{"Content-Type", "application/fhir+json"}});
  CHECK(patched.status == 200);
  CHECK(text_at(parse(patched.body), {"birthDate"}) == "1952-08-01");
  CHECK(patched.header("ETag") == "W/\"2\"");

  std::string add_given_xml = R"(<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="operation"/>)"
                              R"(<part><name value="type"/><valueCode value="add"/></part>)"
                              R"(<part><name value="path"/><valueString value="Patient"/></part>)"
                              R"(<part><name value="name"/><valueString value="active"/></part>)"
                              R"(<part><name value="value"/><valueBoolean value="true"/></part></parameter></Parameters>)";
  auto from_xml = f.call("PATCH", "/fhir/Patient/" + id, add_given_xml, {{"Content-Type", "application/fhir+xml"}});
  CHECK(from_xml.status == 200);
  CHECK(text_at(parse(from_xml.body), {"active"}) == "true");

  // Replacing an element that is not there cannot be applied: 422, nothing written.
  std::string replace_missing =
      R"({"resourceType":"Parameters","parameter":[{"name":"operation","part":[)"
      R"({"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.deceasedBoolean"},)"
      R"({"name":"value","valueBoolean":true}]}]})";
  CHECK(f.call("PATCH", "/fhir/Patient/" + id, replace_missing, {{"Content-Type", "application/fhir+json"}}).status == 422);
  CHECK(f.call("PATCH", "/fhir/Patient/" + id, patient_json, {{"Content-Type", "application/fhir+json"}}).status == 400);
  CHECK(f.call("GET", "/fhir/Patient/" + id).header("ETag") == "W/\"3\"");
}
