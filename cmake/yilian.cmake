# yilian_add_module(NAME dir): one library per top-level folder; sources are the folder's src/*.cpp,
# public headers under include/yilian/<module>/.
function(yilian_add_module target)
  file(GLOB_RECURSE sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/src/*.cpp ${CMAKE_CURRENT_SOURCE_DIR}/src/*.S)
  add_library(${target} STATIC ${sources})
  target_include_directories(${target} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
endfunction()

# yilian_add_test_executable(NAME dir): one doctest executable per test folder.
function(yilian_add_test_executable target dir)
  file(GLOB sources CONFIGURE_DEPENDS ${dir}/*.cpp)
  if(NOT TARGET yilian_doctest_main)
    add_library(yilian_doctest_main STATIC ${CMAKE_SOURCE_DIR}/tests/doctest_main.cpp)
    target_include_directories(yilian_doctest_main PRIVATE ${DOCTEST_INCLUDE_DIR})
  endif()
  add_executable(${target} ${sources})
  target_link_libraries(${target} PRIVATE yilian_doctest_main)
  target_include_directories(${target} PRIVATE ${DOCTEST_INCLUDE_DIR} ${CMAKE_SOURCE_DIR}/tests)
  target_compile_definitions(${target} PRIVATE
    YILIAN_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
    YILIAN_SHARED_DIR="${CMAKE_SOURCE_DIR}/../shared"
    YILIAN_FHIR_PACKAGE_DIR="${YILIAN_FHIR_PACKAGE_DIR}"
    YILIAN_BINARY="${CMAKE_BINARY_DIR}/yilian")
endfunction()
