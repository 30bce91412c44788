// Patient/[id]/$everything through fhir_api::handle against PostgreSQL: the compartment plus the
// shared resources it references (and no other patient's data), _type, _since, keyset pages, POST,
// and 404 for an unknown or deleted patient.
#include <doctest/doctest.h>

#include <set>
#include <thread>

#include "test_database.hpp"
#include "test_support.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/bulk_data.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"

using namespace yilian;
using gateway::http_request;
using gateway::http_response;
using keys = std::set<std::string>;

namespace {

struct everything_fixture {
  gateway::resource_store store;
  gateway::fhir_api api;

  everything_fixture() : store(test::fresh_database_url("everything"), 2), api(store, make_options()) {
    store.migrate();
    gateway::register_everything(api, store);
    put("Organization", "org1", R"({"resourceType":"Organization","name":"County Hospital"})");
    put("Practitioner", "pr1", R"({"resourceType":"Practitioner","name":[{"family":"Li"}]})");
    put("Practitioner", "pr2", R"({"resourceType":"Practitioner","name":[{"family":"Zhao"}]})");
    put("Location", "loc1", R"({"resourceType":"Location","name":"Ward 3"})");
    put("Medication", "med1", R"({"resourceType":"Medication","code":{"text":"Metformin"}})");
    put("Patient", "p1",
        R"({"resourceType":"Patient","name":[{"family":"Wang"}],"managingOrganization":{"reference":"Organization/org1"},
            "generalPractitioner":[{"reference":"Practitioner/pr1"}]})");
    put("Patient", "p2", R"({"resourceType":"Patient","name":[{"family":"Chen"}]})");
    for (int i = 1; i <= 5; ++i) put("Observation", "o" + std::to_string(i), observation("p1", "pr1"));
    put("Observation", "o6", observation("p2", "pr2"));
    // p1's panel has p2's Observation as a member: another patient's data never comes along.
    put("Observation", "o7",
        R"({"resourceType":"Observation","status":"final","code":{"text":"panel"},"subject":{"reference":"Patient/p1"},
            "hasMember":[{"reference":"Observation/o6"}]})");
    put("Encounter", "e1",
        R"({"resourceType":"Encounter","status":"finished","class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"AMB"},
            "subject":{"reference":"Patient/p1"},"location":[{"location":{"reference":"Location/loc1"}}]})");
    put("MedicationRequest", "mr1",
        R"({"resourceType":"MedicationRequest","status":"active","intent":"order","subject":{"reference":"Patient/p1"},
            "medicationReference":{"reference":"Medication/med1"},"requester":{"reference":"Practitioner/pr1"}})");
  }

  static std::string observation(const std::string& patient, const std::string& performer) {
    return R"({"resourceType":"Observation","status":"final","code":{"text":"glucose"},"subject":{"reference":"Patient/)" +
           patient + R"("},"performer":[{"reference":"Practitioner/)" + performer + R"("}]})";
  }

  static gateway::fhir_api_options make_options() {
    gateway::fhir_api_options o;
    o.base_url = "http://test.local/fhir";
    return o;
  }

  http_response call(std::string method, std::string target, std::string body = {},
                     std::string content_type = "application/fhir+json") {
    http_request req;
    req.method = std::move(method);
    req.target = std::move(target);
    req.body = std::move(body);
    if (!req.body.empty()) req.headers.push_back({"Content-Type", std::move(content_type)});
    return api.handle(req);
  }

  fhir::value put(const std::string& type, const std::string& id, const std::string& body) {
    fhir::value resource = test::parse_json_or_fail(body);
    resource.set("id", fhir::value::make_string(id));
    auto res = call("PUT", "/fhir/" + type + "/" + id, fhir::to_json(resource));
    REQUIRE_MESSAGE(res.status < 300, res.body);
    return test::parse_json_or_fail(res.body);
  }

  fhir::value bundle(const std::string& target) {
    auto res = call("GET", target);
    REQUIRE_MESSAGE(res.status == 200, target << " -> " << res.body);
    return test::parse_json_or_fail(res.body);
  }

  static std::string link(const fhir::value& bundle, std::string_view relation) {
    if (const auto* links = bundle.find("link"))
      for (const auto& l : links->items())
        if (l.find("relation")->text() == relation) return l.find("url")->text();
    return {};
  }

  static std::vector<std::string> entries(const fhir::value& bundle) {
    std::vector<std::string> out;
    if (const auto* entry = bundle.find("entry"))
      for (const auto& e : entry->items()) {
        const auto& r = *e.find("resource");
        out.push_back(r.find("resourceType")->text() + "/" + r.find("id")->text());
      }
    return out;
  }

  // Follows next links from `target` (absolute links are made relative to the API again).
  std::vector<std::string> all_pages(std::string target, std::size_t& pages) {
    std::vector<std::string> out;
    pages = 0;
    while (!target.empty()) {
      fhir::value b = bundle(target);
      CHECK(b.find("type")->text() == "searchset");
      ++pages;
      for (auto& k : entries(b)) out.push_back(std::move(k));
      std::string next = link(b, "next");
      target = next.empty() ? "" : next.substr(std::string("http://test.local").size());
      REQUIRE(pages < 100);
    }
    return out;
  }
};

const keys p1_everything = {"Patient/p1",     "Organization/org1", "Practitioner/pr1", "Observation/o1",
                            "Observation/o2", "Observation/o3",    "Observation/o4",   "Observation/o5",
                            "Observation/o7", "Encounter/e1",      "Location/loc1",    "MedicationRequest/mr1",
                            "Medication/med1"};

}  // namespace

TEST_CASE_FIXTURE(everything_fixture,
                  "$everything: the compartment, the shared resources it references, nothing of another patient") {
  std::size_t pages = 0;
  auto found = all_pages("/fhir/Patient/p1/$everything", pages);
  CHECK(pages == 1);
  CHECK(keys(found.begin(), found.end()) == p1_everything);
  CHECK(found.size() == p1_everything.size());

  CHECK(link(bundle("/fhir/Patient/p1/$everything"), "self") == "http://test.local/fhir/Patient/p1/$everything");
  auto p2 = all_pages("/fhir/Patient/p2/$everything", pages);
  CHECK(keys(p2.begin(), p2.end()) == keys{"Patient/p2", "Observation/o6", "Practitioner/pr2"});
}

TEST_CASE_FIXTURE(everything_fixture, "$everything: _count pages with a keyset cursor, stable while data is added") {
  fhir::value first = bundle("/fhir/Patient/p1/$everything?_count=4");
  CHECK(entries(first).size() == 4);
  std::string next = link(first, "next");
  REQUIRE(!next.empty());
  CHECK(next.find("_count=4") != std::string::npos);
  CHECK(next.find("_cursor=") != std::string::npos);
  // Added between pages, sorting before the cursor: neither repeated nor shifting what follows.
  put("AllergyIntolerance", "a1",
      R"({"resourceType":"AllergyIntolerance","patient":{"reference":"Patient/p1"},"code":{"text":"penicillin"}})");
  std::vector<std::string> seen = entries(first);
  while (!next.empty()) {
    fhir::value page = bundle(next.substr(std::string("http://test.local").size()));
    CHECK(entries(page).size() <= 4);
    CHECK(link(page, "first").find("_cursor") == std::string::npos);
    for (auto& k : entries(page)) seen.push_back(std::move(k));
    next = link(page, "next");
  }
  CHECK(keys(seen.begin(), seen.end()) == p1_everything);
  CHECK(seen.size() == p1_everything.size());

  std::size_t pages = 0;
  auto again = all_pages("/fhir/Patient/p1/$everything?_count=5", pages);
  CHECK(pages == 3);  // 14 resources
  CHECK(again.size() == p1_everything.size() + 1);
  CHECK(call("GET", "/fhir/Patient/p1/$everything?_count=x").status == 400);
  CHECK(call("GET", "/fhir/Patient/p1/$everything?_cursor=nonsense").status == 400);
}

TEST_CASE_FIXTURE(everything_fixture, "$everything: _type and _since, GET and POST") {
  std::size_t pages = 0;
  auto typed = all_pages("/fhir/Patient/p1/$everything?_type=Practitioner,Encounter&_type=Medication", pages);
  CHECK(keys(typed.begin(), typed.end()) == keys{"Practitioner/pr1", "Encounter/e1", "Medication/med1"});
  CHECK(call("GET", "/fhir/Patient/p1/$everything?_type=Nonsense").status == 400);

  std::this_thread::sleep_for(std::chrono::milliseconds(5));  // later than every write of the fixture
  fhir::value changed = put("Observation", "o3", observation("p1", "pr1"));
  std::string since = changed.find("meta")->find("lastUpdated")->text();
  std::string encoded = since;
  for (auto pos = encoded.find('+'); pos != std::string::npos; pos = encoded.find('+', pos))
    encoded.replace(pos, 1, "%2B");
  auto recent = all_pages("/fhir/Patient/p1/$everything?_since=" + encoded, pages);
  CHECK(keys(recent.begin(), recent.end()) == keys{"Observation/o3"});
  CHECK(call("GET", "/fhir/Patient/p1/$everything?_since=yesterday").status == 400);

  auto posted = call("POST", "/fhir/Patient/p1/$everything", "_type=Patient", "application/x-www-form-urlencoded");
  REQUIRE_MESSAGE(posted.status == 200, posted.body);
  CHECK(entries(test::parse_json_or_fail(posted.body)) == std::vector<std::string>{"Patient/p1"});
}

TEST_CASE_FIXTURE(everything_fixture, "$everything: 404 for an unknown or deleted patient") {
  CHECK(call("GET", "/fhir/Patient/nobody/$everything").status == 404);
  REQUIRE(call("DELETE", "/fhir/Patient/p2").status < 300);
  auto gone = call("GET", "/fhir/Patient/p2/$everything");
  CHECK(gone.status == 404);
  CHECK(gone.body.find("OperationOutcome") != std::string::npos);
  CHECK(call("GET", "/fhir/Observation/o1/$everything").status == 404);  // only on Patient
}
