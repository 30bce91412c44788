#include "yilian/adapters/file_loader.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include "test_database.hpp"

using namespace yilian;

TEST_CASE("file loader: demo alliance stored once, reload changes nothing, bad files rejected with a reason") {
  gateway::resource_store store(test::fresh_database_url("file_loader"), 1);
  store.migrate();
  gateway::request_context ctx;
  const std::filesystem::path demo = std::filesystem::path(YILIAN_SOURCE_DIR) / "examples/demo-alliance";

  auto first = adapters::load_fhir_files(store, ctx, demo);
  CHECK(first.rejected == 0);
  CHECK(first.stored == 7);
  auto patient = store.read(ctx, "Patient", "chen-guohua");
  REQUIRE(patient);
  CHECK(patient->version == 1);
  CHECK(patient->json.find("陈国华") != std::string::npos);

  auto again = adapters::load_fhir_files(store, ctx, demo);
  CHECK(again.stored == 0);
  CHECK(again.unchanged == 7);
  CHECK(store.read(ctx, "Patient", "chen-guohua")->version == 1);

  auto dir = std::filesystem::temp_directory_path() / ("yilian-loader-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "a-bad.json") << R"({"resourceType":"Patient","birthDate":"yesterday"})";
  std::ofstream(dir / "b-good.ndjson") << R"({"resourceType":"Organization","id":"nd-1","name":"乡镇卫生院"})" << "\n"
                                       << "{not json\n";
  auto mixed = adapters::load_fhir_files(store, ctx, dir);
  CHECK(mixed.stored == 1);
  CHECK(mixed.rejected == 2);
  REQUIRE(mixed.errors.size() == 2);
  CHECK(mixed.errors[0].find("Patient.birthDate") != std::string::npos);
  CHECK(mixed.errors[1].find("b-good.ndjson:2") != std::string::npos);
  std::filesystem::remove_all(dir);

  auto missing = adapters::load_fhir_files(store, ctx, "/no/such/path");
  CHECK(missing.rejected == 1);
}
