#include "yilian/fhir/subset.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "yilian/fhir/json.hpp"

using yilian::fhir::subset_resource;
using yilian::fhir::summary_mode;
using yilian::fhir::to_json;
using yilian::fhir::value;

namespace fs = std::filesystem;

namespace {

value parse(std::string_view text) { return yilian::test::parse_json_or_fail(text); }

value official_example(const std::string& file) {
  return parse(yilian::test::read_file(fs::path(YILIAN_FHIR_PACKAGE_DIR) / file));
}

std::vector<std::string> member_names(const value& object) {
  std::vector<std::string> out;
  for (const auto& m : object.members()) out.push_back(m.name);
  return out;
}

// Number of SUBSETTED tags in meta.tag.
int subsetted_tags(const value& resource) {
  const value* meta = resource.find("meta");
  const value* tags = meta ? meta->find("tag") : nullptr;
  if (!tags) return 0;
  int n = 0;
  for (const value& tag : tags->items()) {
    const value* system = tag.find("system");
    const value* code = tag.find("code");
    if (system && code && system->text() == "http://terminology.hl7.org/CodeSystem/v3-ObservationValue" &&
        code->text() == "SUBSETTED")
      ++n;
  }
  return n;
}

}  // namespace

TEST_CASE("subset: _summary=true on the official Patient example") {
  const value patient = official_example("Patient-example.json");
  const value summary = subset_resource(patient, summary_mode::summary, {});
  CHECK(member_names(summary) == std::vector<std::string>{"resourceType", "id", "meta", "identifier", "active", "name",
                                                          "telecom", "gender", "birthDate", "_birthDate", "deceasedBoolean",
                                                          "address", "managingOrganization"});
  CHECK(subsetted_tags(summary) == 1);
  // HumanName is a datatype: its summary elements (all but id/extension) stay.
  CHECK(to_json(*summary.find("name")) == to_json(*patient.find("name")));
  // Summary again: nothing more to remove, the tag is not duplicated.
  CHECK(subset_resource(summary, summary_mode::summary, {}) == summary);
}
