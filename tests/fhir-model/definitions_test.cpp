#include "yilian/fhir/definitions.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <stdexcept>
#include <string>

#include <unistd.h>

using yilian::fhir::binding_strength;
using yilian::fhir::definitions;
using yilian::fhir::element_def;
using yilian::fhir::json_primitive;
using yilian::fhir::type_kind;

namespace {

const definitions& r4() { return definitions::r4(); }

std::vector<std::string> child_names(const element_def& e) {
  std::vector<std::string> out;
  REQUIRE(e.children != nullptr);
  for (const element_def* c : *e.children) out.push_back(c->name);
  return out;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

}  // namespace

TEST_CASE("definitions: R4 has 146 concrete resource types, sorted") {
  const auto& types = r4().resource_types();
  CHECK(types.size() == 146);
  CHECK(std::is_sorted(types.begin(), types.end()));
  CHECK(contains(types, "Patient"));
  CHECK(contains(types, "Bundle"));
  CHECK_FALSE(contains(types, "DomainResource"));
  CHECK_FALSE(contains(types, "Resource"));
  CHECK(r4().is_resource_type("Observation"));
  CHECK(r4().is_resource_type("DomainResource"));  // a resource type, though abstract
  CHECK_FALSE(r4().is_resource_type("HumanName"));
  CHECK_FALSE(r4().is_resource_type("Unknown"));
  CHECK(r4().find_type("Unknown") == nullptr);
}

TEST_CASE("definitions: Patient.name is 0..* HumanName and resolves to HumanName's elements") {
  const auto* patient = r4().find_type("Patient");
  REQUIRE(patient != nullptr);
  CHECK(patient->kind == type_kind::resource);
  CHECK(patient->base == "DomainResource");
  CHECK_FALSE(patient->is_abstract);

  const auto names = child_names(patient->root);
  // Inherited elements come first, in definition order.
  REQUIRE(names.size() > 5);
  CHECK(names[0] == "id");
  CHECK(names[1] == "meta");
  CHECK(contains(names, "text"));
  CHECK(contains(names, "contained"));
  CHECK(contains(names, "extension"));

  const element_def* name = r4().find_child(patient->root, "name");
  REQUIRE(name != nullptr);
  CHECK(name->path == "Patient.name");
  CHECK(name->min == 0);
  CHECK(name->max == yilian::fhir::unbounded);
  CHECK(name->is_array());
  REQUIRE(name->type_codes.size() == 1);
  CHECK(name->type_codes[0] == "HumanName");
  CHECK(name->is_summary);
  CHECK(name->children == r4().find_type("HumanName")->root.children);

  const element_def* given = r4().find_element("Patient.name.given");
  REQUIRE(given != nullptr);
  CHECK(given->path == "HumanName.given");
  CHECK(given->type_codes == std::vector<std::string>{"string"});
  REQUIRE(given->children != nullptr);
  CHECK(given->children->empty());  // primitive-valued

  const element_def* gender = r4().find_element("Patient.gender");
  REQUIRE(gender != nullptr);
  CHECK(gender->binding == binding_strength::required);
  CHECK(gender->value_set == "http://hl7.org/fhir/ValueSet/administrative-gender");

  const element_def* gp = r4().find_element("Patient.generalPractitioner");
  REQUIRE(gp != nullptr);
  CHECK(contains(gp->target_profiles, "Practitioner"));
  CHECK(contains(gp->target_profiles, "Organization"));

  CHECK(r4().find_element("Patient.active")->is_modifier);
  CHECK(r4().find_element("Patient.nope") == nullptr);
  CHECK(r4().find_element("Nope.name") == nullptr);
}

TEST_CASE("definitions: choice elements (Observation.value[x])") {
  const auto* observation = r4().find_type("Observation");
  REQUIRE(observation != nullptr);
  std::string chosen;
  const element_def* value = r4().find_child(observation->root, "valueQuantity", &chosen);
  REQUIRE(value != nullptr);
  CHECK(value->name == "value[x]");
  CHECK(value->is_choice());
  CHECK(value->choice_base() == "value");
  CHECK(chosen == "Quantity");

  CHECK(r4().find_child(observation->root, "valueDateTime", &chosen) == value);
  CHECK(chosen == "dateTime");
  CHECK(r4().find_child(observation->root, "valueString", &chosen) == value);
  CHECK(chosen == "string");
  CHECK(r4().find_child(observation->root, "valueHumanName") == nullptr);  // not an allowed type
  CHECK(r4().find_child(observation->root, "value") == nullptr);
  CHECK(r4().find_child(observation->root, "valuequantity") == nullptr);

  CHECK(r4().find_element("Observation.value[x]") == value);
  const element_def* unit = r4().find_element("Observation.valueQuantity.unit");
  REQUIRE(unit != nullptr);
  CHECK(unit->path == "Quantity.unit");

  // Non-choice children report their single type.
  CHECK(r4().find_child(observation->root, "status", &chosen) != nullptr);
  CHECK(chosen == "code");
}

TEST_CASE("definitions: contentReference (Questionnaire.item.item)") {
  const element_def* item = r4().find_element("Questionnaire.item");
  const element_def* nested = r4().find_element("Questionnaire.item.item");
  REQUIRE(item != nullptr);
  REQUIRE(nested != nullptr);
  CHECK(nested->content_reference == "#Questionnaire.item");
  CHECK(nested->children == item->children);
  const element_def* link_id = r4().find_element("Questionnaire.item.item.linkId");
  REQUIRE(link_id != nullptr);
  CHECK(link_id->path == "Questionnaire.item.linkId");
  CHECK(r4().find_element("Questionnaire.item.item.item.item.text") != nullptr);
}

TEST_CASE("definitions: structural flags (xml attributes, xhtml, resource-typed elements)") {
  const element_def* url = r4().find_element("Extension.url");
  REQUIRE(url != nullptr);
  CHECK(url->xml_attribute);
  CHECK(url->type_codes == std::vector<std::string>{"uri"});
  const element_def* id = r4().find_element("Element.id");
  REQUIRE(id != nullptr);
  CHECK(id->xml_attribute);
  CHECK(id->type_codes == std::vector<std::string>{"string"});
  const element_def* div = r4().find_element("Narrative.div");
  REQUIRE(div != nullptr);
  CHECK(div->xhtml);
  CHECK(r4().find_element("Patient.text.div") == div);

  const element_def* resource = r4().find_element("Bundle.entry.resource");
  REQUIRE(resource != nullptr);
  CHECK(resource->type_codes == std::vector<std::string>{"Resource"});
  REQUIRE(resource->children != nullptr);
  CHECK(resource->children->empty());  // shape comes from the resourceType in the data
}

TEST_CASE("definitions: primitive types") {
  const auto* date = r4().find_type("date");
  REQUIRE(date != nullptr);
  CHECK(date->kind == type_kind::primitive_type);
  CHECK(date->json == json_primitive::string);
  REQUIRE_FALSE(date->regex.empty());
  std::regex date_rx(date->regex);
  CHECK(std::regex_match("2024-02-29", date_rx));
  CHECK(std::regex_match("2024", date_rx));
  CHECK_FALSE(std::regex_match("2024-13", date_rx));
  // The root lists id and extension (the shape of JSON's "_date"), never `value`.
  CHECK(child_names(date->root) == std::vector<std::string>{"id", "extension"});

  CHECK(r4().find_type("decimal")->json == json_primitive::number);
  CHECK(r4().find_type("integer")->json == json_primitive::number);
  CHECK(r4().find_type("positiveInt")->json == json_primitive::number);
  CHECK(r4().find_type("unsignedInt")->json == json_primitive::number);
  CHECK(r4().find_type("boolean")->json == json_primitive::boolean);
  CHECK(r4().find_type("string")->json == json_primitive::string);
  CHECK(r4().find_type("instant")->json == json_primitive::string);
  CHECK(r4().find_type("HumanName")->kind == type_kind::complex_type);
}

TEST_CASE("definitions: required value sets") {
  const auto* gender = r4().value_set_codes("http://hl7.org/fhir/ValueSet/administrative-gender");
  REQUIRE(gender != nullptr);
  CHECK(gender->size() == 4);
  for (const char* code : {"male", "female", "other", "unknown"})
    CHECK(gender->count(std::string("http://hl7.org/fhir/administrative-gender|") + code) == 1);
  CHECK(r4().value_set_codes("http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1") == gender);

  const auto* status = r4().value_set_codes("http://hl7.org/fhir/ValueSet/observation-status");
  REQUIRE(status != nullptr);
  CHECK(status->count("http://hl7.org/fhir/observation-status|final") == 1);

  // Abstract (notSelectable) codes of a whole-system include are not allowed in data.
  const auto* item_type = r4().value_set_codes("http://hl7.org/fhir/ValueSet/item-type");
  REQUIRE(item_type != nullptr);
  CHECK(item_type->count("http://hl7.org/fhir/item-type|group") == 1);
  CHECK(item_type->count("http://hl7.org/fhir/item-type|question") == 0);

  CHECK(r4().value_set_codes("http://hl7.org/fhir/ValueSet/mimetypes") == nullptr);
  CHECK(r4().value_set_codes("http://example.org/nope") == nullptr);
}

TEST_CASE("definitions: search parameters") {
  const auto params = r4().search_params("Patient");
  auto find = [&](const std::string& code) -> const yilian::fhir::search_param_def* {
    for (const auto* p : params)
      if (p->code == code) return p;
    return nullptr;
  };
  const auto* identifier = find("identifier");
  REQUIRE(identifier != nullptr);
  CHECK(identifier->type == "token");
  CHECK(identifier->expression == "Patient.identifier");
  for (const char* code : {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "_text", "_content"})
    CHECK_MESSAGE(find(code) != nullptr, code);
  CHECK(find("_id")->type == "token");
  CHECK(find("_lastUpdated")->type == "date");

  CHECK(r4().find_search_param("Patient", "identifier") == identifier);
  CHECK(r4().find_search_param("Patient", "_id") == find("_id"));
  CHECK(r4().find_search_param("Patient", "code") == nullptr);

  // Bundle is not a DomainResource: no _text, but _id.
  CHECK(r4().find_search_param("Bundle", "_text") == nullptr);
  CHECK(r4().find_search_param("Bundle", "_id") != nullptr);

  const auto* subject = r4().find_search_param("Observation", "subject");
  REQUIRE(subject != nullptr);
  CHECK(subject->type == "reference");
  CHECK(std::find(subject->target.begin(), subject->target.end(), "Patient") != subject->target.end());

  const auto* code_value = r4().find_search_param("Observation", "code-value-quantity");
  REQUIRE(code_value != nullptr);
  CHECK(code_value->type == "composite");
  CHECK(code_value->components.size() == 2);
}

TEST_CASE("definitions: compartments from the official CompartmentDefinitions") {
  using strings = std::vector<std::string>;
  const auto* observation = r4().compartment_params("Patient", "Observation");
  REQUIRE(observation != nullptr);
  CHECK(*observation == strings{"subject", "performer"});
  const auto* patient = r4().compartment_params("Patient", "Patient");
  REQUIRE(patient != nullptr);
  CHECK(*patient == strings{"link"});
  const auto* in_encounter = r4().compartment_params("Encounter", "Observation");
  REQUIRE(in_encounter != nullptr);
  CHECK(*in_encounter == strings{"encounter"});
  const auto* encounter_practitioner = r4().compartment_params("Practitioner", "Encounter");
  REQUIRE(encounter_practitioner != nullptr);
  CHECK(*encounter_practitioner == strings{"practitioner", "participant"});
  const auto* device_observation = r4().compartment_params("Device", "Observation");
  REQUIRE(device_observation != nullptr);
  CHECK(*device_observation == strings{"subject", "device"});

  // Only "{def}" (the compartment's own resource) or no parameter at all: not a member.
  CHECK(r4().compartment_params("Encounter", "Encounter") == nullptr);
  CHECK(r4().compartment_params("Encounter", "Patient") == nullptr);
  CHECK(r4().compartment_params("Patient", "Organization") == nullptr);
  CHECK(r4().compartment_params("Nowhere", "Observation") == nullptr);
  CHECK(r4().compartment_params("Patient", "NoSuchType") == nullptr);

  for (const char* compartment : {"Patient", "Encounter", "RelatedPerson", "Practitioner", "Device"}) {
    const auto& members = r4().compartment_members(compartment);
    CHECK_MESSAGE(members.size() > 10, compartment);
    CHECK(std::is_sorted(members.begin(), members.end()));
    for (const std::string& member : members) {
      CHECK_MESSAGE(r4().is_resource_type(member), member);
      const auto* params = r4().compartment_params(compartment, member);
      REQUIRE(params != nullptr);
      CHECK_FALSE(params->empty());
      // Every parameter is a search parameter of the member type (checks the two lists agree).
      for (const std::string& code : *params)
        CHECK_MESSAGE(r4().find_search_param(member, code) != nullptr, member << "." << code);
    }
  }
  CHECK(contains(r4().compartment_members("Patient"), "Observation"));
  CHECK_FALSE(contains(r4().compartment_members("Patient"), "Organization"));
  CHECK(r4().compartment_members("Nowhere").empty());
}

TEST_CASE("definitions: load() reads compartments and rejects malformed ones") {
  const std::string types = R"("types":[{"name":"Patient","kind":"resource","elements":[{"p":"Patient"}]}])";
  auto defs = definitions::load("{" + types + R"(,"compartments":{"Patient":{"Patient":["link"]}}})");
  REQUIRE(defs->compartment_params("Patient", "Patient") != nullptr);
  CHECK(defs->compartment_members("Patient") == std::vector<std::string>{"Patient"});
  CHECK_THROWS_AS(definitions::load("{" + types + R"(,"compartments":[]})"), std::runtime_error);
  CHECK_THROWS_AS(definitions::load("{" + types + R"(,"compartments":{"Patient":{"Patient":[]}}})"),
                  std::runtime_error);
  CHECK_THROWS_AS(definitions::load("{" + types + R"(,"compartments":{"Patient":{"Patient":[1]}}})"),
                  std::runtime_error);
}

TEST_CASE("definitions: every element path resolves to itself") {
  for (const auto& name : r4().resource_types()) {
    const auto* type = r4().find_type(name);
    REQUIRE(type != nullptr);
    REQUIRE(type->root.children != nullptr);
    for (const element_def* child : *type->root.children) {
      CHECK(child->children != nullptr);
      CHECK(r4().find_element(child->path) == child);
    }
  }
}

TEST_CASE("definitions: load() rejects malformed documents") {
  CHECK_THROWS_AS(definitions::load("not json"), std::runtime_error);
  CHECK_THROWS_AS(definitions::load("{}"), std::runtime_error);
  CHECK_THROWS_AS(definitions::load(R"({"types":[{"name":"X","kind":"resource","elements":[{"p":"Y"}]}]})"),
                  std::runtime_error);
  auto small = definitions::load(
      R"({"types":[{"name":"X","kind":"resource","elements":[{"p":"X"},{"p":"X.a","max":"*","t":["string"]}]}]})");
  REQUIRE(small != nullptr);
  CHECK(small->resource_types() == std::vector<std::string>{"X"});
  CHECK(small->find_element("X.a")->max == yilian::fhir::unbounded);
}

TEST_CASE("definitions: the committed file is what scripts/gen-definitions.py derives from the package") {
  namespace fs = std::filesystem;
  const fs::path package = YILIAN_FHIR_PACKAGE_DIR;
  const fs::path source = YILIAN_SOURCE_DIR;
  if (!fs::exists(package / "package.json") || std::system("python3 --version >/dev/null 2>&1") != 0) {
    MESSAGE("skipped: no FHIR package at " << package.string() << " (scripts/fetch-fhir-package) or no python3");
    return;
  }
  const fs::path out = fs::temp_directory_path() / ("yilian-r4-definitions-" + std::to_string(::getpid()) + ".json");
  const std::string command = "python3 '" + (source / "scripts/gen-definitions.py").string() + "' '" +
                              package.string() + "' '" + out.string() + "' 2>/dev/null";
  REQUIRE(std::system(command.c_str()) == 0);
  const bool same = read_file(out) == read_file(source / "fhir-model/definitions/r4-definitions.json");
  fs::remove(out);
  CHECK_MESSAGE(same, "regenerate: cmake --build <build> --target yilian_regenerate_definitions");
}
