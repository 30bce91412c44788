// FHIR search through fhir_api::handle against PostgreSQL: each parameter type with its prefixes
// and modifiers, chains, _has, _include/_revinclude, _sort, keyset paging while data changes,
// _total, _summary/_elements, compartments, and the 400/outcome answers to bad input.
#include <doctest/doctest.h>

#include <set>

#include "test_database.hpp"
#include "test_support.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"

using namespace yilian;
using gateway::http_request;
using gateway::http_response;
using ids = std::set<std::string>;

namespace {

struct search_fixture {
  gateway::resource_store store;
  gateway::fhir_api api;

  search_fixture() : store(test::fresh_database_url("search_features"), 4), api(store, make_options()) {
    store.migrate();
    put("Organization", "hosp", R"({"resourceType":"Organization","name":"临沂市人民医院"})");
    put("Patient", "p1",
        R"({"resourceType":"Patient","active":true,"name":[{"family":"Müller","given":["Anna"]}],"gender":"female",
            "birthDate":"1974-12-25","managingOrganization":{"reference":"Organization/hosp"},
            "identifier":[{"system":"http://hospital.example/mrn","value":"A1",
              "type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"NI"}]}}]})");
    put("Patient", "p2",
        R"({"resourceType":"Patient","name":[{"family":"王","given":["伟"]}],"gender":"male","birthDate":"1980-03",
            "identifier":[{"system":"http://hospital.example/mrn","value":"B2"}]})");
    put("Patient", "p3", R"({"resourceType":"Patient","name":[{"family":"Mueller"}],"gender":"female"})");
    put("Observation", "o1",
        R"({"resourceType":"Observation","status":"final","subject":{"reference":"Patient/p1"},
            "code":{"coding":[{"system":"http://loinc.org","code":"2823-3","display":"Potassium"}]},
            "effectiveDateTime":"2024-05-01T08:00:00+08:00",
            "valueQuantity":{"value":4.2,"unit":"mmol/L","system":"http://unitsofmeasure.org","code":"mmol/L"}})");
    put("Observation", "o2",
        R"({"resourceType":"Observation","status":"final","subject":{"reference":"Patient/p2"},
            "code":{"coding":[{"system":"http://loinc.org","code":"2823-3"}]},
            "effectivePeriod":{"start":"2023-01-01","end":"2023-01-31"},
            "valueQuantity":{"value":5.9,"unit":"mmol/L","system":"http://unitsofmeasure.org","code":"mmol/L"}})");
    put("Observation", "o3",
        R"({"resourceType":"Observation","status":"preliminary","subject":{"reference":"Patient/p1"},
            "code":{"coding":[{"system":"http://loinc.org","code":"29463-7"}],"text":"Body weight"},
            "effectiveDateTime":"2025","valueQuantity":{"value":70,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}})");
  }

  static gateway::fhir_api_options make_options() {
    gateway::fhir_api_options o;
    o.base_url = "http://test.local/fhir";
    return o;
  }

  void put(const std::string& type, const std::string& id, const std::string& body) {
    fhir::value resource = test::parse_json_or_fail(body);
    resource.set("id", fhir::value::make_string(id));
    auto res = call("PUT", "/fhir/" + type + "/" + id, fhir::to_json(resource));
    REQUIRE_MESSAGE(res.status < 300, res.body);
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

  fhir::value bundle(const std::string& target, std::vector<gateway::http_header> headers = {}) {
    auto res = call("GET", target, {}, std::move(headers));
    REQUIRE_MESSAGE(res.status == 200, target << " -> " << res.body);
    return test::parse_json_or_fail(res.body);
  }

  // Ids of the entries with search.mode `mode`.
  ids found(const std::string& target, const std::string& mode = "match") {
    fhir::value b = bundle(target);
    ids out;
    if (const fhir::value* entries = b.find("entry"))
      for (const auto& e : entries->items())
        if (e.find("search")->find("mode")->text() == mode) out.insert(e.find("resource")->find("id")->text());
    return out;
  }
};

search_fixture& fixture() {
  static search_fixture f;
  return f;
}

#define YILIAN_REQUIRE_SEARCH_DATABASE()                                      \
  if (test::fresh_database_url("probe").empty()) {                            \
    MESSAGE("skipped: YILIAN_TEST_DATABASE_URL_FILE is not set");            \
    return;                                                                   \
  }

}  // namespace

TEST_CASE("search features: string, token, reference, date, quantity with prefixes and modifiers") {
  YILIAN_REQUIRE_SEARCH_DATABASE();
  auto& f = fixture();
  // string: prefix, case- and accent-insensitive; :exact; :contains
  CHECK(f.found("/fhir/Patient?name=muller") == ids{"p1"});
  CHECK(f.found("/fhir/Patient?family=MU") == ids{"p1", "p3"});
  CHECK(f.found("/fhir/Patient?family:exact=Müller") == ids{"p1"});
  CHECK(f.found("/fhir/Patient?family:exact=muller").empty());
  CHECK(f.found("/fhir/Patient?family:contains=elle") == ids{"p3"});
  CHECK(f.found("/fhir/Patient?name=%E7%8E%8B") == ids{"p2"});  // 王
  // token: code, system|code, :not, :text, :of-type, boolean
  CHECK(f.found("/fhir/Observation?code=2823-3") == ids{"o1", "o2"});
  CHECK(f.found("/fhir/Observation?code=http://loinc.org|29463-7") == ids{"o3"});
  CHECK(f.found("/fhir/Observation?code=http://other|29463-7").empty());
  CHECK(f.found("/fhir/Observation?code:not=2823-3") == ids{"o3"});
  CHECK(f.found("/fhir/Observation?code:text=potas") == ids{"o1"});
  CHECK(f.found("/fhir/Observation?code:text=body") == ids{"o3"});
  CHECK(f.found("/fhir/Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|NI|A1") == ids{"p1"});
  CHECK(f.found("/fhir/Patient?active=true") == ids{"p1"});
  CHECK(f.found("/fhir/Patient?gender=female,male") == ids{"p1", "p2", "p3"});  // OR
  CHECK(f.found("/fhir/Patient?gender=female&family=mu&birthdate=1974") == ids{"p1"});  // AND
  // reference: Type/id, bare id, absolute URL on this server, type modifier
  CHECK(f.found("/fhir/Observation?subject=Patient/p1") == ids{"o1", "o3"});
  CHECK(f.found("/fhir/Observation?subject=p2") == ids{"o2"});
  CHECK(f.found("/fhir/Observation?subject=http://test.local/fhir/Patient/p2") == ids{"o2"});
  CHECK(f.found("/fhir/Observation?subject:Patient=p1") == ids{"o1", "o3"});
  CHECK(f.found("/fhir/Observation?subject:Group=p1").empty());
  // :missing
  CHECK(f.found("/fhir/Patient?birthdate:missing=true") == ids{"p3"});
  CHECK(f.found("/fhir/Patient?birthdate:missing=false") == ids{"p1", "p2"});
  // date prefixes on ranges of different precision ("1980-03" is the whole month)
  CHECK(f.found("/fhir/Patient?birthdate=1974-12-25") == ids{"p1"});
  CHECK(f.found("/fhir/Patient?birthdate=1980") == ids{"p2"});
  CHECK(f.found("/fhir/Patient?birthdate=1980-03-15").empty());  // the month is not within one day
  CHECK(f.found("/fhir/Patient?birthdate=ne1974-12-25") == ids{"p2"});
  CHECK(f.found("/fhir/Patient?birthdate=gt1975") == ids{"p2"});
  CHECK(f.found("/fhir/Patient?birthdate=lt1975") == ids{"p1"});
  CHECK(f.found("/fhir/Patient?birthdate=ge1980-03-15") == ids{"p2"});
  CHECK(f.found("/fhir/Patient?birthdate=le1974-12-25") == ids{"p1"});
  CHECK(f.found("/fhir/Patient?birthdate=sa1975") == ids{"p2"});
  CHECK(f.found("/fhir/Patient?birthdate=eb1975") == ids{"p1"});
  CHECK(f.found("/fhir/Observation?date=ap2024-04-30") == ids{"o1"});  // within 10% of the distance to now
  CHECK(f.found("/fhir/Observation?date=2023-01-15") .empty());         // the Period is not within that day
  CHECK(f.found("/fhir/Observation?date=2023-01") == ids{"o2"});        // but within that month
  CHECK(f.found("/fhir/Observation?date=ge2024-01-01&date=lt2025-01-01") == ids{"o1"});
  CHECK(f.found("/fhir/Observation?date=2024-05-01T00:00:00Z") == ids{"o1"});  // the same instant as 08:00+08:00
  CHECK(f.found("/fhir/Observation?date=2024-05-01T00:00:01Z").empty());
  CHECK(f.found("/fhir/Observation?date=2024-05-01") == ids{"o1"});     // 08:00 +08:00 is on that local day
  // quantity: number only, with units, converted units, prefixes
  CHECK(f.found("/fhir/Observation?value-quantity=4.2") == ids{"o1"});
  CHECK(f.found("/fhir/Observation?value-quantity=gt5|http://unitsofmeasure.org|mmol/L") == ids{"o2"});
  CHECK(f.found("/fhir/Observation?value-quantity=4200|http://unitsofmeasure.org|umol/L") == ids{"o1"});
  CHECK(f.found("/fhir/Observation?value-quantity=70000|http://unitsofmeasure.org|g") == ids{"o3"});
  CHECK(f.found("/fhir/Observation?value-quantity=le5||mmol/L") == ids{"o1"});
  CHECK(f.found("/fhir/Observation?value-quantity=ap4") == ids{"o1"});  // within 10%
  // composite: code and value of the same Observation
  CHECK(f.found("/fhir/Observation?code-value-quantity=http://loinc.org|2823-3$gt5") == ids{"o2"});
  CHECK(f.found("/fhir/Observation?code-value-quantity=http://loinc.org|29463-7$gt5") == ids{"o3"});
  CHECK(f.found("/fhir/Observation?code-value-quantity=http://loinc.org|29463-7$lt5").empty());
  // _id and _lastUpdated
  CHECK(f.found("/fhir/Patient?_id=p1,p3") == ids{"p1", "p3"});
  CHECK(f.found("/fhir/Patient?_lastUpdated=gt2020-01-01").size() == 3);
  CHECK(f.found("/fhir/Patient?_lastUpdated=lt2020-01-01").empty());
}

TEST_CASE("search features: chains, _has, _include, _revinclude and compartments") {
  YILIAN_REQUIRE_SEARCH_DATABASE();
  auto& f = fixture();
  CHECK(f.found("/fhir/Observation?subject:Patient.name=muller") == ids{"o1", "o3"});
  CHECK(f.found("/fhir/Observation?subject.identifier=http://hospital.example/mrn|B2") == ids{"o2"});
  CHECK(f.found("/fhir/Observation?subject.organization.name=%E4%B8%B4%E6%B2%82") == ids{"o1", "o3"});  // 临沂
  CHECK(f.found("/fhir/Patient?_has:Observation:subject:code=29463-7") == ids{"p1"});
  CHECK(f.found("/fhir/Patient?_has:Observation:subject:status=final") == ids{"p1", "p2"});
  CHECK(f.found("/fhir/Observation?code=29463-7&_include=Observation:subject") == ids{"o3"});
  CHECK(f.found("/fhir/Observation?code=29463-7&_include=Observation:subject", "include") == ids{"p1"});
  CHECK(f.found("/fhir/Observation?code=29463-7&_include=Observation:subject&_include:iterate=Patient:organization",
                "include") == ids{"p1", "hosp"});
  CHECK(f.found("/fhir/Patient?_id=p1&_revinclude=Observation:subject", "include") == ids{"o1", "o3"});
  CHECK(f.found("/fhir/Patient/p1/Observation") == ids{"o1", "o3"});
  CHECK(f.found("/fhir/Patient/p1/Observation?code=2823-3") == ids{"o1"});
}

TEST_CASE("search features: _sort, paging that stays correct while data changes, _total, _summary, _elements") {
  YILIAN_REQUIRE_SEARCH_DATABASE();
  auto& f = fixture();
  auto order = [&](const std::string& target) {
    std::vector<std::string> out;
    fhir::value b = f.bundle(target);
    for (const auto& e : b.find("entry")->items()) out.push_back(e.find("resource")->find("id")->text());
    return out;
  };
  CHECK(order("/fhir/Patient?_sort=birthdate") == std::vector<std::string>{"p1", "p2", "p3"});  // missing last
  CHECK(order("/fhir/Patient?_sort=-birthdate") == std::vector<std::string>{"p2", "p1", "p3"});
  CHECK(order("/fhir/Patient?_sort=gender,-_id") == std::vector<std::string>{"p3", "p1", "p2"});

  // 25 more patients; walk pages of 10 while new ones arrive: every earlier one exactly once.
  for (int i = 0; i < 25; ++i)
    f.put("Patient", "page-" + std::to_string(100 + i), R"({"resourceType":"Patient","gender":"other"})");
  std::vector<std::string> seen;
  std::string target = "/fhir/Patient?gender=other&_count=10&_sort=-_lastUpdated";
  int pages = 0;
  while (!target.empty() && pages < 10) {
    fhir::value b = f.bundle(target);
    CHECK_FALSE(b.find("total"));  // not free to know: only with _total
    for (const auto& e : b.find("entry")->items()) seen.push_back(e.find("resource")->find("id")->text());
    f.put("Patient", "late-" + std::to_string(pages), R"({"resourceType":"Patient","gender":"other"})");
    target.clear();
    for (const auto& l : b.find("link")->items())
      if (l.find("relation")->text() == "next") target = l.find("url")->text().substr(std::string("http://test.local").size());
    ++pages;
  }
  std::set<std::string> unique(seen.begin(), seen.end());
  CHECK(unique.size() == seen.size());
  for (int i = 0; i < 25; ++i) CHECK(unique.count("page-" + std::to_string(100 + i)) == 1);
  CHECK(pages == 3);

  CHECK(f.bundle("/fhir/Patient?gender=other&_total=accurate&_count=1").find("total")->text() == "28");
  fhir::value count = f.bundle("/fhir/Patient?gender=other&_summary=count");
  CHECK(count.find("total")->text() == "28");
  CHECK_FALSE(count.find("entry"));
  // Every element of p1 is a summary element: nothing removed, no SUBSETTED tag.
  std::string summary_json = fhir::to_json(f.bundle("/fhir/Patient?_id=p1&_summary=true"));
  CHECK(summary_json.find("SUBSETTED") == std::string::npos);
  CHECK(summary_json.find("\"name\"") != std::string::npos);
  std::string text_json = fhir::to_json(f.bundle("/fhir/Patient?_id=p1&_summary=text"));
  CHECK(text_json.find("SUBSETTED") != std::string::npos);
  CHECK(text_json.find("\"name\"") == std::string::npos);
  fhir::value elements = f.bundle("/fhir/Patient?_id=p1&_elements=gender");
  const fhir::value& p1 = *elements.find("entry")->items()[0].find("resource");
  CHECK(p1.find("gender"));
  CHECK_FALSE(p1.find("name"));
}

TEST_CASE("search features: previous links walk back through the same pages, NULL sort values included") {
  YILIAN_REQUIRE_SEARCH_DATABASE();
  auto& f = fixture();
  for (int i = 0; i < 7; ++i)
    f.put("Patient", "walk-" + std::to_string(i),
          i % 3 == 0 ? R"({"resourceType":"Patient","gender":"unknown"})"
                     : R"({"resourceType":"Patient","gender":"unknown","birthDate":"199)" + std::to_string(i) + R"("})");
  auto link = [](const fhir::value& b, const std::string& relation) {
    for (const auto& l : b.find("link")->items())
      if (l.find("relation")->text() == relation) return l.find("url")->text().substr(std::string("http://test.local").size());
    return std::string();
  };
  auto page_ids = [](const fhir::value& b) {
    std::vector<std::string> out;
    if (const fhir::value* entries = b.find("entry"))
      for (const auto& e : entries->items()) out.push_back(e.find("resource")->find("id")->text());
    return out;
  };
  for (const char* sort : {"birthdate", "-birthdate"}) {
    std::vector<std::vector<std::string>> forward;
    std::string target = std::string("/fhir/Patient?gender=unknown&_count=3&_sort=") + sort;
    fhir::value b = f.bundle(target);
    CHECK(link(b, "previous").empty());
    forward.push_back(page_ids(b));
    while (!link(b, "next").empty()) {
      b = f.bundle(link(b, "next"));
      forward.push_back(page_ids(b));
    }
    REQUIRE(forward.size() == 3);
    CHECK(forward[2].size() == 1);
    std::vector<std::string> all;
    for (const auto& page : forward) all.insert(all.end(), page.begin(), page.end());
    CHECK(std::set<std::string>(all.begin(), all.end()).size() == 7);
    CHECK(all.back() == "walk-6");  // the patients without a birth date come last, by id: walk-0, walk-3, walk-6
    for (std::size_t back = forward.size() - 1; back-- > 0;) {
      b = f.bundle(link(b, "previous"));
      CHECK_MESSAGE(page_ids(b) == forward[back], sort << " page " << back);
    }
    CHECK(link(b, "previous").empty());
  }
}

TEST_CASE("search features: unknown parameters are reported, malformed values are 400 naming the parameter") {
  YILIAN_REQUIRE_SEARCH_DATABASE();
  auto& f = fixture();
  CHECK(f.found("/fhir/Patient?nickname=x&gender=male") == ids{"p2"});
  fhir::value b = f.bundle("/fhir/Patient?nickname=x");
  CHECK(fhir::to_json(b).find("\"mode\":\"outcome\"") != std::string::npos);
  CHECK(f.call("GET", "/fhir/Patient?nickname=x", {}, {{"Prefer", "handling=strict"}}).status == 400);
  for (const char* target : {"/fhir/Patient?birthdate=19x4", "/fhir/Observation?value-quantity=abc",
                             "/fhir/Patient?_sort=nosuch", "/fhir/Patient?_include=Nope:x",
                             "/fhir/Observation?code-value-quantity=http://loinc.org|2823-3",
                             "/fhir/Patient?gender.name=x", "/fhir/Patient?gender:below=male",
                             "/fhir/Patient?active:missing=maybe", "/fhir/Patient?_total=some",
                             "/fhir/Patient?_cursor=!!!"}) {
    auto res = f.call("GET", target);
    CHECK_MESSAGE(res.status == 400, target << " -> " << res.status << " " << res.body);
    CHECK_MESSAGE(res.body.find("OperationOutcome") != std::string::npos, target);
  }
  // POST _search with a form body answers like GET.
  http_request post;
  post.method = "POST";
  post.target = "/fhir/Observation/_search";
  post.body = "code=2823-3&subject=Patient/p1";
  post.headers.push_back({"Content-Type", "application/x-www-form-urlencoded"});
  auto res = f.api.handle(post);
  REQUIRE(res.status == 200);
  CHECK(res.body.find("\"id\":\"o1\"") != std::string::npos);
  CHECK(res.body.find("\"id\":\"o2\"") == std::string::npos);
}
