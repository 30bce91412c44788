// The search benchmark's data set: deterministic, seeded, built through the value model.
//
// Organizations org-1 … org-10 (hospitals); per patient i: Patient pat-<i> (Chinese name,
// 居民身份证号 with a valid GB 11643 check digit, 门诊号, managing hospital), two Encounters
// enc-<i>-0/1 and `observations_per_patient` Observations obs-<i>-<k> (LOINC lab and vital-sign
// codes with UCUM quantities in plausible ranges, effective dates spread over 2019–2025, performer
// a hospital, about a third with an encounter). Every entity has its own random stream, so any
// resource can be regenerated alone (the query phase draws its parameters from the data that way).
//
// Header-only so the integration smoke test can use it without a library of its own.
#pragma once

#include <array>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "yilian/fhir/value.hpp"
#include "yilian/profiles/alliance.hpp"

namespace yilian::bench {

// splitmix64: small, fast and identical on every platform (std distributions are not).
class random_stream {
 public:
  random_stream(std::uint64_t seed, std::uint64_t stream, std::uint64_t index)
      : state_(seed * 0x9E3779B97F4A7C15ull ^ (stream << 48) ^ index) {
    next();
  }
  std::uint64_t next() noexcept {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n).
  std::uint64_t below(std::uint64_t n) noexcept { return n == 0 ? 0 : next() % n; }
  // Uniform in [low, high].
  double between(double low, double high) noexcept {
    return low + (high - low) * static_cast<double>(next() >> 11) / static_cast<double>(1ull << 53);
  }

 private:
  std::uint64_t state_;
};

struct dataset_config {
  std::size_t patients = 10'000;
  std::size_t observations_per_patient = 50;
  std::uint64_t seed = 20261123;
};

struct organization_info {
  std::string_view name;
  std::string_view city;
  std::string_view credit_code;  // 统一社会信用代码 (identifier under the alliance organization OID)
};

inline constexpr std::array<organization_info, 10> hospitals{{
    {"北京协和医院", "北京市", "12100000400000624D"},
    {"复旦大学附属中山医院", "上海市", "12310000425006117P"},
    {"中山大学附属第一医院", "广州市", "12440000455350958M"},
    {"四川大学华西医院", "成都市", "12510000450717216F"},
    {"浙江大学医学院附属第一医院", "杭州市", "123300004700017890"},
    {"武汉大学人民医院", "武汉市", "12420000441331574Q"},
    {"江苏省人民医院", "南京市", "12320000466007214H"},
    {"深圳市人民医院", "深圳市", "12440300455755118X"},
    {"重庆医科大学附属第一医院", "重庆市", "12500000450400616B"},
    {"西安交通大学第一附属医院", "西安市", "12610000435230034J"},
}};

struct lab_code {
  std::string_view loinc;
  std::string_view display;
  std::string_view ucum;  // UCUM code, also used as the unit text
  double low;             // plausible range of generated values
  double high;
  int decimals;
  bool vital_sign;        // category vital-signs, else laboratory
};

// The common codes are drawn uniformly: each holds about 1/20 of all Observations.
inline constexpr std::array<lab_code, 20> common_codes{{
    {"2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 65, 240, 0, false},
    {"2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.2, 5.6, 1, false},
    {"2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 132, 148, 0, false},
    {"2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.5, 2.4, 2, false},
    {"718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 9.5, 17.5, 1, false},
    {"6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 3.2, 14.0, 1, false},
    {"777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 110, 420, 0, false},
    {"4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.6, 10.5, 1, false},
    {"2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 120, 290, 0, false},
    {"2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", 45, 400, 0, false},
    {"2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", 28, 95, 0, false},
    {"13457-7", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation", "mg/dL", 50, 200, 0, false},
    {"1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 7, 120, 0, false},
    {"1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 8, 110, 0, false},
    {"3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", 0.3, 6.5, 2, false},
    {"8480-6", "Systolic blood pressure", "mm[Hg]", 95, 185, 0, true},
    {"8462-4", "Diastolic blood pressure", "mm[Hg]", 55, 115, 0, true},
    {"8867-4", "Heart rate", "/min", 48, 125, 0, true},
    {"29463-7", "Body weight", "kg", 38, 115, 1, true},
    {"8310-5", "Body temperature", "Cel", 35.8, 39.6, 1, true},
}};

// Drawn for about one Observation in `rare_code_one_in`: selective enough for `_has` to return a
// handful of patients.
inline constexpr lab_code rare_code{"10839-9", "Troponin I.cardiac [Mass/volume] in Serum or Plasma", "ng/mL",
                                    0.01, 2.5, 2, false};
inline constexpr std::uint64_t rare_code_one_in = 5'000;
inline constexpr std::size_t rare_code_index = common_codes.size();  // code index of the rare code
inline constexpr std::size_t encounters_per_patient = 2;

inline const lab_code& code_at(std::size_t index) {
  return index < common_codes.size() ? common_codes[index] : rare_code;
}

inline constexpr std::string_view loinc_system = "http://loinc.org";
inline constexpr std::string_view ucum_system = "http://unitsofmeasure.org";

// Family names roughly weighted by frequency (王 and 李 about 7% each).
struct weighted_name {
  std::string_view text;
  unsigned weight;
};
inline constexpr std::array<weighted_name, 20> family_names{{
    {"王", 71}, {"李", 70}, {"张", 66}, {"刘", 53}, {"陈", 45}, {"杨", 31}, {"黄", 22}, {"赵", 22}, {"吴", 20},
    {"周", 19}, {"徐", 15}, {"孙", 15}, {"马", 14}, {"朱", 13}, {"胡", 12}, {"郭", 11}, {"何", 11}, {"高", 10},
    {"林", 10}, {"罗", 9},
}};
inline constexpr std::array<std::string_view, 16> male_given{
    "伟", "强", "磊", "军", "洋", "勇", "杰", "涛", "明", "超", "国华", "建国", "志强", "文博", "浩然", "子轩"};
inline constexpr std::array<std::string_view, 16> female_given{
    "芳", "娜", "敏", "静", "丽", "艳", "娟", "霞", "秀英", "桂英", "玉兰", "婷婷", "欣怡", "雨涵", "梓涵", "思琪"};

struct region {
  std::string_view code;  // administrative division, the first six digits of the 身份证号
  std::string_view city;
};
inline constexpr std::array<region, 10> regions{{
    {"110101", "北京市"}, {"310104", "上海市"}, {"440106", "广州市"}, {"510107", "成都市"}, {"330106", "杭州市"},
    {"420106", "武汉市"}, {"320102", "南京市"}, {"440305", "深圳市"}, {"500103", "重庆市"}, {"610113", "西安市"},
}};

// Calendar arithmetic on days since 1970-01-01 (Howard Hinnant's civil algorithms).
struct civil_date {
  int year;
  unsigned month;
  unsigned day;
};
inline civil_date civil_from_days(std::int64_t z) noexcept {
  z += 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  const unsigned d = doy - (153 * mp + 2) / 5 + 1;
  const unsigned m = mp < 10 ? mp + 3 : mp - 9;
  return {static_cast<int>(yoe + era * 400 + (m <= 2 ? 1 : 0)), m, d};
}
inline std::int64_t days_from_civil(int y, unsigned m, unsigned d) noexcept {
  y -= m <= 2 ? 1 : 0;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

inline std::string format_date(std::int64_t days, bool compact = false) {
  auto c = civil_from_days(days);
  char buf[48];
  std::snprintf(buf, sizeof buf, compact ? "%04d%02u%02u" : "%04d-%02u-%02u", c.year, c.month, c.day);
  return buf;
}

// Seconds since 1970 in China Standard Time, as a FHIR dateTime with the +08:00 offset.
inline std::string format_local_datetime(std::int64_t seconds) {
  std::int64_t days = seconds / 86'400;
  std::int64_t in_day = seconds % 86'400;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%sT%02d:%02d:%02d+08:00", format_date(days).c_str(), static_cast<int>(in_day / 3600),
                static_cast<int>(in_day / 60 % 60), static_cast<int>(in_day % 60));
  return buf;
}

inline std::string format_decimal(double v, int decimals) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

// Random streams, one per kind of entity.
enum : std::uint64_t { patient_stream = 1, encounter_stream = 2, observation_stream = 3 };

struct patient_facts {
  std::size_t index = 0;
  std::string id;
  std::string family;
  std::string given;
  bool male = false;
  std::string birth_date;   // YYYY-MM-DD
  std::string national_id;  // 18 characters, valid check digit
  std::string outpatient_number;
  std::size_t hospital = 0;  // index into hospitals
  std::size_t region = 0;
  std::string phone;
};

inline std::string patient_id(std::size_t i) { return "pat-" + std::to_string(i); }
inline std::string organization_id(std::size_t h) { return "org-" + std::to_string(h + 1); }
inline std::string encounter_id(std::size_t i, std::size_t j) {
  return "enc-" + std::to_string(i) + "-" + std::to_string(j);
}
inline std::string observation_id(std::size_t i, std::size_t k) {
  return "obs-" + std::to_string(i) + "-" + std::to_string(k);
}

inline patient_facts patient_facts_of(const dataset_config& config, std::size_t i) {
  random_stream r(config.seed, patient_stream, i);
  patient_facts p;
  p.index = i;
  p.id = patient_id(i);
  unsigned total_weight = 0;
  for (const auto& f : family_names) total_weight += f.weight;
  auto pick = static_cast<unsigned>(r.below(total_weight));
  for (const auto& f : family_names) {
    if (pick < f.weight) {
      p.family = f.text;
      break;
    }
    pick -= f.weight;
  }
  p.male = r.below(2) == 0;
  p.given = p.male ? male_given[r.below(male_given.size())] : female_given[r.below(female_given.size())];
  const std::int64_t first_birth = days_from_civil(1935, 1, 1);
  const std::int64_t last_birth = days_from_civil(2020, 12, 31);
  const std::int64_t birth = first_birth + static_cast<std::int64_t>(r.below(last_birth - first_birth + 1));
  p.birth_date = format_date(birth);
  // Region and sequence code from the index keep the numbers of the first 5,000 patients unique
  // whatever their birth dates; the sequence parity encodes the sex as GB 11643 requires.
  p.region = i % regions.size();
  const std::size_t sequence = (i / regions.size()) % 500 * 2 + (p.male ? 1 : 0);
  char seq[8];
  std::snprintf(seq, sizeof seq, "%03zu", sequence);
  std::string first17 = std::string(regions[p.region].code) + format_date(birth, true) + seq;
  p.national_id = first17 + profiles::national_id_check_digit(first17);
  char outpatient[24];  // room for any size_t: no truncation warning
  std::snprintf(outpatient, sizeof outpatient, "MZ%08zu", i);
  p.outpatient_number = outpatient;
  p.hospital = r.below(hospitals.size());
  char phone[16];
  std::snprintf(phone, sizeof phone, "13%09llu", static_cast<unsigned long long>(r.below(1'000'000'000)));
  p.phone = phone;
  return p;
}

struct observation_facts {
  std::size_t patient = 0;
  std::size_t index = 0;
  std::size_t code = 0;  // index for code_at()
  std::int64_t effective_seconds = 0;  // local (China Standard Time) seconds since 1970
  std::string value;                   // decimal text
  std::size_t hospital = 0;
  int encounter = -1;  // -1 = none, else 0 .. encounters_per_patient-1
};

inline constexpr int first_effective_year = 2019;
inline constexpr int last_effective_year = 2025;

inline observation_facts observation_facts_of(const dataset_config& config, std::size_t i, std::size_t k,
                                              std::size_t patient_hospital) {
  random_stream r(config.seed, observation_stream, static_cast<std::uint64_t>(i) << 20 | k);
  observation_facts o;
  o.patient = i;
  o.index = k;
  o.code = r.below(rare_code_one_in) == 0 ? rare_code_index : r.below(common_codes.size());
  const std::int64_t first = days_from_civil(first_effective_year, 1, 1) * 86'400;
  const std::int64_t last = days_from_civil(last_effective_year + 1, 1, 1) * 86'400;
  o.effective_seconds = first + static_cast<std::int64_t>(r.below(static_cast<std::uint64_t>(last - first)));
  const lab_code& c = code_at(o.code);
  o.value = format_decimal(r.between(c.low, c.high), c.decimals);
  // Mostly the patient's own hospital, sometimes another one (referrals, shared labs).
  o.hospital = r.below(5) == 0 ? r.below(hospitals.size()) : patient_hospital;
  o.encounter = r.below(3) == 0 ? static_cast<int>(r.below(encounters_per_patient)) : -1;
  return o;
}

inline int year_of(std::int64_t seconds) { return civil_from_days(seconds / 86'400).year; }

// --- resources, built through the value model ------------------------------------------------

namespace detail {
using fhir::value;
inline value str(std::string_view s) { return value::make_string(std::string(s)); }
inline value object(std::initializer_list<std::pair<std::string_view, value>> members) {
  value v = value::make_object();
  for (const auto& [name, member] : members) v.set(name, member);
  return v;
}
inline value array(std::initializer_list<value> items) {
  value v = value::make_array();
  for (const auto& item : items) v.push_back(item);
  return v;
}
inline value reference(std::string_view type, std::string_view id) {
  return object({{"reference", str(std::string(type) + "/" + std::string(id))}});
}
inline value coding(std::string_view system, std::string_view code, std::string_view display) {
  return object({{"system", str(system)}, {"code", str(code)}, {"display", str(display)}});
}
}  // namespace detail

inline fhir::value organization_resource(std::size_t h) {
  using namespace detail;
  const auto& o = hospitals[h];
  return object({
      {"resourceType", str("Organization")},
      {"id", str(organization_id(h))},
      {"identifier", array({object({{"system", str(profiles::identifier_system::organization)},
                                    {"value", str(o.credit_code)}})})},
      {"active", value::make_boolean(true)},
      {"type", array({object({{"coding", array({coding("http://terminology.hl7.org/CodeSystem/organization-type",
                                                       "prov", "Healthcare Provider")})}})})},
      {"name", str(o.name)},
      {"address", array({object({{"city", str(o.city)}, {"country", str("CN")}})})},
  });
}

inline fhir::value patient_resource(const patient_facts& p) {
  using namespace detail;
  return object({
      {"resourceType", str("Patient")},
      {"id", str(p.id)},
      {"identifier", array({object({{"use", str("official")},
                                    {"system", str(profiles::identifier_system::national_id)},
                                    {"value", str(p.national_id)}}),
                            object({{"use", str("usual")},
                                    {"system", str(profiles::identifier_system::outpatient_number)},
                                    {"value", str(p.outpatient_number)}})})},
      {"active", value::make_boolean(true)},
      {"name", array({object({{"use", str("official")},
                              {"text", str(p.family + p.given)},
                              {"family", str(p.family)},
                              {"given", array({str(p.given)})}})})},
      {"telecom", array({object({{"system", str("phone")}, {"value", str(p.phone)}, {"use", str("mobile")}})})},
      {"gender", str(p.male ? "male" : "female")},
      {"birthDate", str(p.birth_date)},
      {"address", array({object({{"city", str(regions[p.region].city)}, {"country", str("CN")}})})},
      {"managingOrganization", reference("Organization", organization_id(p.hospital))},
  });
}

inline fhir::value encounter_resource(const dataset_config& config, const patient_facts& p, std::size_t j) {
  using namespace detail;
  random_stream r(config.seed, encounter_stream, static_cast<std::uint64_t>(p.index) << 8 | j);
  const std::int64_t first = days_from_civil(first_effective_year, 1, 1) * 86'400;
  const std::int64_t last = days_from_civil(last_effective_year + 1, 1, 1) * 86'400;
  const std::int64_t start = first + static_cast<std::int64_t>(r.below(static_cast<std::uint64_t>(last - first)));
  const std::int64_t end = start + 600 + static_cast<std::int64_t>(r.below(3 * 3600));
  return object({
      {"resourceType", str("Encounter")},
      {"id", str(encounter_id(p.index, j))},
      {"status", str("finished")},
      {"class", coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB", "ambulatory")},
      {"subject", reference("Patient", p.id)},
      {"period", object({{"start", str(format_local_datetime(start))}, {"end", str(format_local_datetime(end))}})},
      {"serviceProvider", reference("Organization", organization_id(p.hospital))},
  });
}

inline fhir::value observation_resource(const observation_facts& o) {
  using namespace detail;
  const lab_code& c = code_at(o.code);
  value category = c.vital_sign
                       ? coding("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs")
                       : coding("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory");
  value obs = object({
      {"resourceType", str("Observation")},
      {"id", str(observation_id(o.patient, o.index))},
      {"status", str("final")},
      {"category", array({object({{"coding", array({category})}})})},
      {"code", object({{"coding", array({coding(loinc_system, c.loinc, c.display)})}, {"text", str(c.display)}})},
      {"subject", reference("Patient", patient_id(o.patient))},
  });
  if (o.encounter >= 0)
    obs.set("encounter", reference("Encounter", encounter_id(o.patient, static_cast<std::size_t>(o.encounter))));
  obs.set("effectiveDateTime", str(format_local_datetime(o.effective_seconds)));
  obs.set("performer", array({reference("Organization", organization_id(o.hospital))}));
  obs.set("valueQuantity", object({{"value", value::make_number(o.value)},
                                   {"unit", str(c.ucum)},
                                   {"system", str(ucum_system)},
                                   {"code", str(c.ucum)}}));
  return obs;
}

// How many Observations carry each code (index as in code_at()): the expected `_total`s.
inline std::vector<std::size_t> observation_code_counts(const dataset_config& config) {
  std::vector<std::size_t> counts(common_codes.size() + 1, 0);
  for (std::size_t i = 0; i < config.patients; ++i) {
    const std::size_t hospital = patient_facts_of(config, i).hospital;
    for (std::size_t k = 0; k < config.observations_per_patient; ++k)
      ++counts[observation_facts_of(config, i, k, hospital).code];
  }
  return counts;
}

inline std::size_t resources_per_patient(const dataset_config& config) {
  return 1 + encounters_per_patient + config.observations_per_patient;
}

}  // namespace yilian::bench
