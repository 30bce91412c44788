// The search benchmark's generator and loader at a tiny scale, so bench/ cannot rot unnoticed:
// generated resources are valid (base R4 and alliance rules), deterministic, and load through
// resource_store so that the REST API finds them.
#include <doctest/doctest.h>

#include "../../bench/search_load.hpp"
#include "test_database.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/fhir/validator.hpp"
#include "yilian/gateway/fhir_api.hpp"

using namespace yilian;

namespace {

void require_valid(const fhir::value& resource, std::string_view type) {
  fhir::issue_list issues;
  const bool valid = fhir::validate_resource(resource, issues, {.check_required_bindings = true, .expected_type = type});
  profiles::check_alliance_rules(resource, issues);
  INFO(fhir::to_json(fhir::to_operation_outcome(issues)));
  REQUIRE(valid);
  REQUIRE_FALSE(issues.has_errors());
}

}  // namespace

TEST_CASE("search bench: generated resources are valid and deterministic") {
  const bench::dataset_config config{.patients = 40, .observations_per_patient = 10, .seed = 7};
  for (std::size_t h = 0; h < bench::hospitals.size(); ++h) require_valid(bench::organization_resource(h), "Organization");
  for (std::size_t i = 0; i < config.patients; ++i) {
    const auto p = bench::patient_facts_of(config, i);
    require_valid(bench::patient_resource(p), "Patient");
    auto id = profiles::parse_national_id(p.national_id);
    REQUIRE(id.has_value());
    CHECK(id->birth_date == p.birth_date);
    CHECK(id->male == p.male);
    for (std::size_t j = 0; j < bench::encounters_per_patient; ++j)
      require_valid(bench::encounter_resource(config, p, j), "Encounter");
    for (std::size_t k = 0; k < config.observations_per_patient; ++k)
      require_valid(bench::observation_resource(bench::observation_facts_of(config, i, k, p.hospital)), "Observation");
  }
  CHECK(fhir::to_json(bench::patient_resource(bench::patient_facts_of(config, 3))) ==
        fhir::to_json(bench::patient_resource(bench::patient_facts_of(config, 3))));
  CHECK(bench::patient_facts_of(config, 3).national_id != bench::patient_facts_of(config, 4).national_id);
  const auto counts = bench::observation_code_counts(config);
  std::size_t total = 0;
  for (auto n : counts) total += n;
  CHECK(total == config.patients * config.observations_per_patient);
}

TEST_CASE("search bench: the loader writes every resource through resource_store") {
  const std::string url = test::fresh_database_url("search_bench_smoke");
  if (url.empty()) {
    MESSAGE("skipped: YILIAN_TEST_DATABASE_URL_FILE is not set");
    return;
  }
  const bench::dataset_config config{.patients = 4, .observations_per_patient = 3, .seed = 11};
  gateway::resource_store store(url, 2);
  store.migrate();
  std::size_t progress_calls = 0;
  auto loaded = bench::load_dataset(store, config, 0, config.patients, 2, true, [&](std::size_t) { ++progress_calls; });
  CHECK(loaded.resources == bench::hospitals.size() + config.patients * bench::resources_per_patient(config));
  CHECK(loaded.per_second() > 0);

  gateway::fhir_api_options options;
  options.base_url = "http://test.local/fhir";
  gateway::fhir_api api(store, options);
  gateway::http_request read;
  read.method = "GET";
  read.target = "/fhir/Observation/" + bench::observation_id(3, 2);
  CHECK(api.handle(read).status == 200);

  const auto p = bench::patient_facts_of(config, 2);
  gateway::http_request search;
  search.method = "GET";
  search.target = "/fhir/Patient?identifier=urn:oid:2.16.156.10011.1.3%7C" + p.national_id;
  auto response = api.handle(search);
  REQUIRE(response.status == 200);
  fhir::value bundle;
  fhir::issue_list issues;
  REQUIRE(fhir::parse_json(response.body, bundle, issues));
  const auto* entries = bundle.find("entry");
  REQUIRE(entries);
  REQUIRE(entries->items().size() == 1);
  CHECK(entries->items()[0].find("fullUrl")->text() == "http://test.local/fhir/Patient/" + p.id);
}
