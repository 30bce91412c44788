// Mapped HL7 v2 Bundles applied as transactions against a real PostgreSQL: every supported corpus
// message is accepted, a replay updates instead of adding, and an HIS ADT and a LIS ORU about the
// same patient and visit meet on the same resources.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <string>

#include "test_database.hpp"
#include "test_support.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"
#include "yilian/mappers/hl7v2.hpp"
#include "yilian/mappers/hl7v2_fhir.hpp"

using namespace yilian;
namespace v2 = yilian::mappers::hl7v2;
namespace fs = std::filesystem;

namespace {

struct ingest_fixture {
  gateway::resource_store store;
  gateway::fhir_api api;

  ingest_fixture() : store(test::fresh_database_url("hl7v2_ingest"), 2), api(store, options()) { store.migrate(); }

  static gateway::fhir_api_options options() {
    gateway::fhir_api_options o;
    o.base_url = "http://test.local/fhir";
    return o;
  }

  gateway::http_response call(std::string method, std::string target, std::string body = {}) {
    gateway::http_request req;
    req.method = std::move(method);
    req.target = std::move(target);
    req.body = std::move(body);
    if (!req.body.empty()) req.headers.push_back({"Content-Type", "application/fhir+json"});
    return api.handle(req);
  }

  // Applies the message's Bundle; returns the entry statuses ("201 Created", "200 OK").
  std::vector<std::string> apply(const fs::path& file) {
    auto parsed = v2::parse(test::read_file(file));
    REQUIRE(parsed.parsed);
    auto mapped = v2::map_to_fhir(*parsed.parsed);
    REQUIRE(mapped.supported);
    auto response = call("POST", "/fhir", fhir::to_json(mapped.bundle));
    REQUIRE_MESSAGE(response.status == 200, file.filename().string(), ": ", response.body);
    fhir::value result = test::parse_json_or_fail(response.body);
    std::vector<std::string> statuses;
    for (const auto& entry : result.find("entry")->items())
      statuses.push_back(entry.find("response")->find("status")->text());
    return statuses;
  }

  long count(const std::string& type, const std::string& query = {}) {
    auto r = call("GET", "/fhir/" + type + "?_summary=count&_total=accurate" + (query.empty() ? "" : "&" + query));
    REQUIRE(r.status == 200);
    return std::stol(test::parse_json_or_fail(r.body).find("total")->text());
  }
};

const fs::path data_dir = fs::path(YILIAN_SOURCE_DIR) / "tests/data/hl7v2";

}  // namespace

TEST_CASE("HL7 v2 ingest: a replayed LIS result updates, an HIS ADT meets it on the same patient and visit") {
  ingest_fixture f;
  auto first = f.apply(data_dir / "cn-lis-oru-r01.hl7");
  CHECK(std::count(first.begin(), first.end(), "201 Created") == static_cast<long>(first.size()));
  auto replay = f.apply(data_dir / "cn-lis-oru-r01.hl7");
  CHECK(std::count(replay.begin(), replay.end(), "200 OK") == static_cast<long>(replay.size()));
  // The same results sent again in GB 18030 (another control id) are the same resources.
  auto gbk = f.apply(data_dir / "cn-lis-oru-r01-gb18030.hl7");
  CHECK(std::count(gbk.begin(), gbk.end(), "200 OK") == static_cast<long>(gbk.size()));
  f.apply(data_dir / "cn-adt-a01.hl7");

  CHECK(f.count("Patient") == 1);
  CHECK(f.count("Patient", "identifier=urn:oid:2.16.156.10011.1.3|500103195207304518") == 1);
  CHECK(f.count("Encounter") == 1);
  CHECK(f.count("Observation") == 9);
  CHECK(f.count("DiagnosticReport") == 2);
  CHECK(f.count("Observation",
                "code=http://loinc.org|2823-3&subject.identifier=urn:oid:2.16.156.10011.1.3|500103195207304518") == 1);
  CHECK(f.count("Organization", "identifier=urn:oid:2.16.156.10011.1.5|47011661-4") == 1);
}

TEST_CASE("HL7 v2 ingest: every supported corpus message applies as one transaction") {
  ingest_fixture f;
  int applied = 0;
  for (const auto& file : fs::directory_iterator(fs::path(YILIAN_SHARED_DIR) / "corpus/hl7v2-msft")) {
    if (file.path().extension() != ".hl7") continue;
    auto parsed = v2::parse(test::read_file(file.path()));
    if (!parsed.parsed) continue;
    auto mapped = v2::map_to_fhir(*parsed.parsed);
    if (!mapped.supported || mapped.has_errors()) continue;
    auto response = f.call("POST", "/fhir", fhir::to_json(mapped.bundle));
    CHECK_MESSAGE(response.status == 200, file.path().filename().string(), ": ", response.body);
    ++applied;
  }
  CHECK(applied >= 25);
}
