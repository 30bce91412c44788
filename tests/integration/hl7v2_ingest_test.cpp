// HL7 v2 ingest against a real PostgreSQL: AA only with the resources committed, a duplicate gets
// the original ACK and changes nothing, AE/AR messages are kept as dead letters that can be listed
// and replayed once the cause is fixed.
#include <doctest/doctest.h>

#include <string>

#include "test_database.hpp"
#include "yilian/adapters/hl7v2_ingest.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"

using namespace yilian;

namespace {

struct ingest_fixture {
  gateway::resource_store store;
  gateway::fhir_api api;
  adapters::hl7v2_ingest ingest;

  ingest_fixture()
      : store(test::fresh_database_url("hl7v2_ingest"), 4), api(store, options()), ingest(store, api) {
    store.migrate();
    ingest.register_operations(api);
  }

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

  fhir::value get(const std::string& target) {
    auto r = call("GET", target);
    REQUIRE_MESSAGE(r.status == 200, r.body);
    fhir::value v;
    fhir::issue_list issues;
    REQUIRE(fhir::parse_json(r.body, v, issues));
    return v;
  }

  long total(const std::string& type, const std::string& query = {}) {
    auto v = get("/fhir/" + type + "?_summary=count&_total=accurate" + (query.empty() ? "" : "&" + query));
    return std::stol(v.find("total")->text());
  }

  long versions_of_all() {
    auto v = get("/fhir/_history?_count=0");
    return std::stol(v.find("total")->text());
  }
};

// A LIS result (v2.4, UTF-8) for a patient with a 居民身份证号: potassium high, sodium normal.
std::string lab_result(const std::string& control_id, const std::string& national_id = "110101199003070038") {
  return "MSH|^~\\&|LIS|HOSP-A|YILIAN|ALLIANCE|20261124093000||ORU^R01|" + control_id +
         "|P|2.4|||AL|NE||UNICODE UTF-8\r"
         "PID|1||" + national_id + "^^^^ID~MRN-778^^^HOSP-A^MR||王^秀英||19900307|F\r"
         "PV1|1|O|内科门诊||||||||||||||||V-20261124-1\r"
         "OBR|1|ORD-1|LAB-5531^LIS|24326-1^电解质^LN|||20261124080000|||||||20261124081000||||||||20261124092500||CH|F\r"
         "OBX|1|NM|2823-3^钾^LN||5.8|mmol/L|3.5-5.3|H|||F|||20261124090000\r"
         "OBX|2|NM|2951-2^钠^LN||140|mmol/L|137-147|N|||F|||20261124090000\r";
}

}  // namespace

TEST_CASE("hl7v2 ingest: AA with the resources committed; a duplicate gets the same ACK and changes nothing") {
  ingest_fixture f;
  auto first = f.ingest.handle(lab_result("MSG-0001"), "10.0.0.5");
  REQUIRE_MESSAGE(first.ack_code == "AA", first.ack << "\n" << first.error);
  CHECK(first.ack.find("MSA|AA|MSG-0001") != std::string::npos);
  CHECK_FALSE(first.duplicate);
  CHECK(f.total("Patient", "identifier=urn:oid:2.16.156.10011.1.3|110101199003070038") == 1);
  CHECK(f.total("Observation") == 2);
  CHECK(f.total("DiagnosticReport") == 1);
  CHECK(f.total("Observation", "code=http://loinc.org|2823-3&value-quantity=gt5.3") == 1);
  long versions = f.versions_of_all();

  auto again = f.ingest.handle(lab_result("MSG-0001"), "10.0.0.5");
  CHECK(again.duplicate);
  CHECK(again.ack == first.ack);
  CHECK(f.versions_of_all() == versions);

  // The same results under a new control id (a resend after a lost ACK with a new MSH-10) update
  // the same resources instead of adding copies.
  auto resent = f.ingest.handle(lab_result("MSG-0002"), "10.0.0.5");
  REQUIRE_MESSAGE(resent.ack_code == "AA", resent.ack);
  CHECK(f.total("Patient") == 1);
  CHECK(f.total("Observation") == 2);
  CHECK(f.total("DiagnosticReport") == 1);
}

TEST_CASE("hl7v2 ingest: unparseable and unsupported messages get AR, kept as dead letters") {
  ingest_fixture f;
  auto garbage = f.ingest.handle("this is not HL7", "10.0.0.9");
  CHECK(garbage.ack_code == "AR");
  CHECK(garbage.ack.find("MSA|AR") != std::string::npos);
  CHECK_FALSE(garbage.message_id.empty());

  std::string query = "MSH|^~\\&|HIS|HOSP-A|YILIAN|ALLIANCE|20261124093000||QRY^A19|Q-1|P|2.4\rQRD|20261124|R|I|Q1\r";
  auto unsupported = f.ingest.handle(query, "10.0.0.9");
  CHECK(unsupported.ack_code == "AR");
  CHECK(unsupported.ack.find("MSA|AR|Q-1") != std::string::npos);
  CHECK(unsupported.ack.find("ERR|") != std::string::npos);

  auto letters = f.ingest.dead_letters();
  REQUIRE(letters.size() == 2);
  CHECK(letters[0].status == "rejected");
  CHECK((letters[0].raw == query || letters[1].raw == query));

  auto listed = f.get("/fhir/$hl7v2-messages");
  REQUIRE(listed.find("parameter"));
  CHECK(listed.find("parameter")->items().size() == 2);
}

TEST_CASE("hl7v2 ingest: a message that cannot be applied gets AE naming why; replayed after the fix it is applied once") {
  ingest_fixture f;
  // Two Patients already carry the identifier the message's Patient is matched on: the
  // conditional update cannot choose, so the message is understood but cannot be applied.
  std::string twin = R"({"resourceType":"Patient","identifier":[{"system":"urn:oid:2.16.156.10011.1.3","value":"110101199003070038"}]})";
  REQUIRE(f.call("POST", "/fhir/Patient", twin).status == 201);
  auto second = f.call("POST", "/fhir/Patient", twin);
  REQUIRE(second.status == 201);

  auto outcome = f.ingest.handle(lab_result("MSG-AE-1"), "10.0.0.7");
  REQUIRE_MESSAGE(outcome.ack_code == "AE", outcome.ack);
  CHECK(outcome.ack.find("MSA|AE|MSG-AE-1") != std::string::npos);
  CHECK(outcome.ack.find("ERR|") != std::string::npos);
  CHECK(f.total("Observation") == 0);  // nothing of the message was applied
  auto letters = f.ingest.dead_letters();
  REQUIRE(letters.size() == 1);
  CHECK(letters[0].status == "error");
  CHECK_FALSE(letters[0].error.empty());

  // Fix: remove the duplicate Patient, then replay the kept message.
  std::string location(second.header("Location"));
  std::string duplicate = location.substr(location.find("/Patient/"), location.find("/_history") - location.find("/Patient/"));
  REQUIRE(f.call("DELETE", "/fhir" + duplicate).status == 200);
  auto replayed = f.call("POST", "/fhir/$hl7v2-replay?id=" + letters[0].message_id);
  REQUIRE_MESSAGE(replayed.status == 200, replayed.body);
  CHECK(replayed.body.find("\"AA\"") != std::string::npos);
  CHECK(f.total("Observation") == 2);
  CHECK(f.ingest.dead_letters().empty());
  CHECK(f.ingest.find(letters[0].message_id)->status == "replayed");

  // The sender's own resend of that message is now a duplicate of the accepted replay.
  auto resend = f.ingest.handle(lab_result("MSG-AE-1"), "10.0.0.7");
  CHECK(resend.duplicate);
  CHECK(f.total("Observation") == 2);
  CHECK(f.call("POST", "/fhir/$hl7v2-replay?id=" + letters[0].message_id).status == 409);
  CHECK(f.call("POST", "/fhir/$hl7v2-replay?id=nope").status == 404);
}

TEST_CASE("hl7v2 ingest: local test codes are kept with a warning, and translated once a ConceptMap for the sender exists") {
  ingest_fixture f;
  auto local_result = [](const std::string& control_id) {
    return "MSH|^~\\&|LIS|HOSP-A|YILIAN|ALLIANCE|20261124093000||ORU^R01|" + control_id + "|P|2.4\r"
           "PID|1||MRN-901^^^HOSP-A^MR||李^四||19800101|M\r"
           "OBR|1|ORD-9|LAB-9|DJZ^电解质^LOCAL|||20261124080000||||||||||||||||CH|F\r"
           "OBX|1|NM|K^钾^LOCAL||3.1|mmol/L|3.5-5.3|L|||F\r";
  };
  auto before = f.ingest.handle(local_result("LOC-1"));
  REQUIRE_MESSAGE(before.ack_code == "AA", before.ack);
  CHECK(before.ack.find("ERR|") != std::string::npos);  // the unmapped local code is reported
  CHECK(f.total("Observation", "code=urn:yilian:local:HOSP-A:code:LOCAL|K") == 1);
  CHECK(f.total("Observation", "code=http://loinc.org|2823-3") == 0);

  std::string concept_map = R"({"resourceType":"ConceptMap","status":"active","group":[{
      "source":"urn:yilian:local:HOSP-A:code:LOCAL","target":"http://loinc.org",
      "element":[{"code":"K","target":[{"code":"2823-3","display":"Potassium [Moles/volume] in Serum or Plasma","equivalence":"equivalent"}]}]}]})";
  REQUIRE(f.call("POST", "/fhir/ConceptMap", concept_map).status == 201);
  auto after = f.ingest.handle(local_result("LOC-2"));
  REQUIRE_MESSAGE(after.ack_code == "AA", after.ack);
  // The same Observation, now with the LOINC coding next to the local one.
  CHECK(f.total("Observation") == 1);
  CHECK(f.total("Observation", "code=http://loinc.org|2823-3") == 1);
  CHECK(f.total("Observation", "code=urn:yilian:local:HOSP-A:code:LOCAL|K") == 1);
}
